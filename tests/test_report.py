"""`ssmscope report`: one self-contained HTML file (and a PDF) over a store made by a real tiny sweep
(tests/app_store.py: app-coord, a coordinate check, and app-lr, a learning-rate grid)."""

from __future__ import annotations

import re
import stat
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from app_store import app_store, make_empty  # noqa: F401
from typer.testing import CliRunner

from ssmscope.app import export as figure_export
from ssmscope.runs.cli.main import app
from ssmscope.runs.store.db import load_runs

N_BOOT = "50"


def _report(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["report", "--n-boot", N_BOOT, *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def built(app_store, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "report.html"
    code, output = _report("--db", str(app_store), "--out", str(out), "--pdf")
    assert code == 0, output
    return out, output


class _Refs(HTMLParser):
    """Every src/href/srcset/data/action attribute and every tag name of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data", "action",
                                                                    "poster", "background")]


def test_the_report_holds_the_figure_both_colourings_transfer_provenance_and_commands(built, app_store):  # noqa: F811
    out, output = built
    page = out.read_text(encoding="utf-8")
    # the coordinate check in the paper's layout: presets as columns, one y range per row, one figure per disc
    assert page.count('class="plotly-graph-div"') == 2 + 3  # app-coord: zoh, euler; app-lr: 3 learning rates
    metas = re.findall(r'"meta":\{"kind":"coord_check"[^}]*\}', page)
    assert metas and all('"y_range":"row"' in m and '"rows":["x","y","dx","dy"]' in m for m in metas)
    assert '"panels":["sp","mup","mup-ssm"]' in page
    # the slope table coloured by stability and by agreement
    assert 'class="slopes stability"' in page and 'class="slopes agreement"' in page
    assert {"stab-flat", "stab-grows", "stab-vanishes"} & set(re.findall(r'class="(stab-\w+)"', page))
    assert set(re.findall(r'class="(agree-[\w-]+)"', page)) >= {"agree-agrees", "agree-disagrees"}
    # regimes and running exponents, and verdict words that never contradict the agreement
    assert "first local s" in page and "nonlinear" in page and "settled" in page
    assert "as predicted" in page and "grows, as predicted (width^0)" not in page
    # learning-rate transfer (app-lr is an LR grid): drift and, per width, η* and the loss at it
    assert "Drift of η*" in page and "<th>lr_opt</th>" in page and "<th>loss_at_opt</th>" in page
    # provenance, from the store's runs rows
    runs = load_runs(app_store)
    for column in ("git_commit", "torch_version", "ssmscope_version", "device", "scan"):
        value = runs.filter(pl.col(column).is_not_null() & (pl.col(column) != ""))[column][0]
        assert str(value) in page, column
    assert "scan backend that ran" in page and "date" in page
    # the exact commands
    assert f"ssmscope sweep app-coord.toml --db {app_store}" in page  # not a built-in spec: its file
    assert f"ssmscope slopes --db {app_store} --where spec=app-coord --width joint --convention rms" in page
    assert f"ssmscope slopes --db {app_store} --where spec=app-lr --where n_x=8 --width n_u" in page
    assert f"ssmscope transfer --db {app_store} --where spec=app-lr --use eval_loss --table optima" in page
    assert "ssmscope transfer" not in page.split("Sweep app-lr")[0]  # app-coord has no LR grid
    # progress lines while it builds, and where the file is
    assert "fitting the slope table" in output and "drawing the coordinate check" in output
    assert f"open {out.resolve()}" in output


def test_the_report_opens_offline(built):
    """No script, stylesheet, image or link points outside the file; no address at all outside plotly.js."""
    from plotly.offline import get_plotlyjs

    page = built[0].read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(page)
    external = [(t, k, v) for t, k, v in parser.refs if re.match(r"\s*(https?:)?//", v, re.I)]
    assert external == [], external
    assert not [v for t, k, v in parser.refs if t in ("script", "link", "img", "iframe") and not v.startswith("#")]
    assert "link" not in parser.tags and "iframe" not in parser.tags and "img" not in parser.tags
    plotly_js = get_plotlyjs()
    assert page.count(plotly_js) == 1  # inlined once
    rest = page.replace(plotly_js, "")
    assert not re.findall(r"https?://", rest, re.I), re.findall(r".{40}https?://.{40}", rest)
    assert not re.search(r"@import|url\(", rest)


@pytest.mark.skipif(figure_export.find_chromium() is None, reason="no Chromium: the PDF is not printed")
def test_pdf_is_printed_next_to_the_html(built):
    pdf = built[0].with_suffix(".pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF") and len(data) > 50_000
    assert "printing the PDF" in built[1]


def test_one_sweep_only(app_store, tmp_path):  # noqa: F811
    out = tmp_path / "coord.html"
    code, output = _report("--db", str(app_store), "--sweep", "app-coord", "--out", str(out))
    assert code == 0, output
    page = out.read_text(encoding="utf-8")
    assert "Sweep app-coord" in page and "Sweep app-lr" not in page and "Drift of η*" not in page


@pytest.mark.parametrize(("case", "message"), [
    ("no store", "no store at"),
    ("empty store", "holds no runs"),
    ("unknown sweep", "--sweep nope: no such sweep"),
    ("bad where", "unknown key 'colour'"),
    ("no runs selected", "no runs match the selection"),
    ("missing folder", "does not exist"),
    ("read-only folder", "cannot write"),
    ("not html", "give a name ending in .html"),
])
def test_every_user_mistake_is_one_line(case, message, app_store, tmp_path):  # noqa: F811
    db, out, extra = str(app_store), str(tmp_path / "r.html"), []
    if case == "no store":
        db = str(tmp_path / "none.duckdb")
    elif case == "empty store":
        db = str(make_empty(tmp_path / "empty.duckdb"))
    elif case == "unknown sweep":
        extra = ["--sweep", "nope"]
    elif case == "bad where":
        extra = ["--where", "colour=red"]
    elif case == "no runs selected":
        extra = ["--where", "preset=nothing"]
    elif case == "missing folder":
        out = str(tmp_path / "no" / "r.html")
    elif case == "read-only folder":
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        out = str(locked / "r.html")
        if __import__("os").access(locked, __import__("os").W_OK):
            pytest.skip("this user writes read-only folders (root)")
    elif case == "not html":
        out = str(tmp_path / "r.pdf")
    code, output = _report("--db", db, "--out", out, *extra)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], output
    assert not Path(out).exists()
