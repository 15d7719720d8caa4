"""Exports of slope frames and the paper's table, and the `ssmscope slopes` command."""

from __future__ import annotations

import io
import json
import re

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from ssmscope.runs.analysis import export, selection
from ssmscope.runs.analysis.slopes import FIT_COLUMNS, fit_slopes, paper_slopes
from ssmscope.runs.analysis.synthetic import synthetic_frame
from ssmscope.runs.cli import slopes as cli_slopes
from ssmscope.runs.cli.main import OneLineErrors
from ssmscope.ssm.errors import ConfigError

SPECIAL = r"we_ird%&#$ {name}~^\x"


@pytest.fixture(scope="module")
def slopes() -> pl.DataFrame:
    frame = synthetic_frame(presets=("sp", SPECIAL), steps=(2,), seeds=3, groups=("", "W_B"))
    return fit_slopes(frame, n_boot=200)


@pytest.fixture(scope="module")
def paper() -> pl.DataFrame:
    return paper_slopes(synthetic_frame(seeds=3), n_boot=200)


def _balanced(tex: str) -> bool:
    """Braces balance once escaped braces (\\{, \\}) are removed, and never close early."""
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# --- machine formats -----------------------------------------------------------------------------
def test_csv_reads_back_to_the_same_numbers_and_every_column(slopes):
    back = pl.read_csv(io.StringIO(export.to_csv(slopes)), schema=slopes.schema)
    assert back.columns == FIT_COLUMNS
    assert back.equals(slopes)  # floats round-trip exactly, nulls stay null, "" stays ""


def test_csv_without_a_schema_still_gives_the_same_estimates(slopes):
    back = pl.read_csv(io.StringIO(export.to_csv(slopes)), infer_schema_length=None)
    for col in ("estimate", "se", "ci_low", "ci_high", "predicted"):
        assert back[col].equals(slopes[col], check_names=True)


def test_parquet_round_trip_keeps_types_and_values(slopes, tmp_path):
    path = tmp_path / "slopes.parquet"
    assert export.export(slopes, "parquet", path) is None
    assert pl.read_parquet(path).equals(slopes)


def test_json_is_one_object_per_row_with_every_column(slopes):
    rows = json.loads(export.to_json(slopes))
    assert len(rows) == slopes.height and list(rows[0]) == FIT_COLUMNS
    assert rows[0]["estimate"] == slopes["estimate"][0]


def test_binary_format_without_a_file_is_a_config_error(slopes):
    with pytest.raises(ConfigError, match="needs an output file"):
        export.export(slopes, "parquet")
    with pytest.raises(ConfigError, match="allowed: csv, md, latex, parquet, json"):
        export.export(slopes, "xlsx")


# --- Markdown --------------------------------------------------------------------------------------
def test_markdown_paper_table_has_the_papers_header_and_one_row_per_configuration(paper):
    table = export.format_paper_table(paper, "markdown")
    raw = [export.paper_header(c, "markdown") for c in "x y dx dy".split()]
    text = export.to_markdown(table, raw_columns=raw)
    lines = text.splitlines()
    assert lines[0] == "| preset | discretization | optimizer | step | ‖x‖ | ‖y‖ | ‖Δx‖ | ‖Δy‖ |"
    assert lines[1] == "|---|---|---|---:|---|---|---|---|"
    assert len(lines) == 2 + 3 * 2  # presets × discretizations
    assert re.search(r"(, as predicted \(|; predicted |agrees with )width<sup>", lines[2]), lines[2]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| sp"] * 2 + ["| mup"] * 2 + ["| mup-ssm"] * 2


def test_markdown_escapes_pipes_in_names():
    text = export.to_markdown(pl.DataFrame({"preset": ["a|b"], "s": [0.5]}))
    assert "a\\|b" in text and text.splitlines()[2].count(" | ") == 1


def test_markdown_floats_are_rounded_and_nulls_empty():
    text = export.to_markdown(pl.DataFrame({"s": [0.123456, None, -0.0001]}))
    assert text.splitlines()[2:] == ["| 0.123 |", "|  |", "| 0.000 |"]


# --- LaTeX -------------------------------------------------------------------------------------------
def test_latex_escapes_special_characters_and_balances_braces(slopes):
    tex = export.to_latex(export.slope_display(slopes), caption="100% of x_1 & y")
    assert r"we\_ird\%\&\#\$ \{name\}\textasciitilde{}\textasciicircum{}\textbackslash{}x" in tex
    assert r"100\% of x\_1 \& y" in tex
    assert tex.count(r"\begin{tabular}") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    assert _balanced(tex)
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert all(line.count(" & ") == body[0].count(" & ") for line in body)  # same number of columns


@pytest.mark.parametrize("text", [SPECIAL, "{{{", "}}", "\\", "a_b^c", "‖Δy‖ ± 0.1 · N", "~%$#&"])
def test_latex_escape_never_leaves_an_active_special_character(text):
    escaped = export.latex_escape(text)
    assert _balanced(escaped)
    words = "textbackslash|textasciitilde|textasciicircum|textless|textgreater|textbar"
    stripped = re.sub(rf"\\({words})\{{\}}", "", escaped)
    stripped = re.sub(r"\\ensuremath\{[^{}]*\}", "", stripped)
    stripped = re.sub(r"\\[&%$#_{}]", "", stripped)
    assert not set(stripped) & set("&%$#_{}~^\\")


def test_latex_paper_table_keeps_its_math_cells_and_escapes_its_names(paper):
    paper = paper.with_columns(pl.lit(SPECIAL).alias("preset"))
    table = export.format_paper_table(paper, "latex")
    tex = export.to_latex(table, raw_columns=[export.paper_header(c, "latex") for c in "x y dx dy".split()])
    assert r"$\|\Delta y\|$" in tex and r"$\mathrm{width}^{" in tex and r"\pm" in tex
    assert tex.isascii() and "as predicted" not in tex  # short cells: exponent, (prediction), mark
    assert r"we\_ird" in tex and _balanced(tex)


def _latex_document(tables: list[str]) -> str:
    return "\n".join([r"\documentclass{article}", r"\usepackage{booktabs}",
                      r"\usepackage[margin=0.5in,landscape]{geometry}", r"\begin{document}", *tables,
                      r"\end{document}", ""])


def _annotated_paper() -> pl.DataFrame:
    """The paper rows as `ssmscope slopes` gets them (regime and trend attached), from a synthetic frame."""
    from ssmscope.runs.analysis.slope_tables import slope_table

    return slope_table(synthetic_frame(seeds=3, steps=(0, 2)), table="paper", layers="mean", step="last", n_boot=100)


def test_latex_exports_are_pure_ascii_balanced_and_short():
    """pdflatex rejects Unicode its input encoding lacks (‖ ± ½ ₀ …): every LaTeX export is ASCII with LaTeX macros
    only, its braces balance, and the paper table's cells are short (no sentences: the caption explains)."""
    paper = _annotated_paper()
    table, raw, caption = export.paper_output(paper, "latex", ["µP and µP-SSM coincide (‖·‖₂, ½·log N_x)"])
    paper_tex = export.export(table, "latex", caption=caption, raw_columns=raw)
    full, _, full_caption = export.full_output(fit_slopes(synthetic_frame(seeds=3), n_boot=50), "latex")
    full_tex = export.export(full, "latex", caption=full_caption)
    for tex in (paper_tex, full_tex):
        assert tex.isascii(), sorted({ch for ch in tex if not ch.isascii()})
        assert _balanced(tex) and tex.count("$") % 2 == 0
    assert r"\frac12" in paper_tex and r"\pm" in paper_tex and r"\|" in paper_tex
    for column in raw:
        for cell in table[column]:
            assert len(re.sub(r"\\[a-z]+|[${}]", "", cell)) <= 40, cell  # e.g. width^0.48±0.06 (½) ✓ NL→
            assert "predicted" not in cell and "as " not in cell, cell


@pytest.mark.parametrize("text", ["‖Δx‖ ± ½ · N₀ ≤ η*", "é ∂ ∪ √ → ← ✓ ✗ ⁻¹", "\u2603 snow", "naïve – “q”"])
def test_latex_escape_gives_ascii_for_any_unicode(text):
    escaped = export.latex_escape(text)
    assert escaped.isascii() and _balanced(escaped), escaped


@pytest.mark.skipif(__import__("shutil").which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_exports_compile_with_pdflatex(tmp_path):
    import subprocess

    paper = _annotated_paper()
    table, raw, caption = export.paper_output(paper, "latex")
    full, _, full_caption = export.full_output(fit_slopes(synthetic_frame(seeds=3), n_boot=50), "latex")
    doc = _latex_document([export.export(table, "latex", caption=caption, raw_columns=raw),
                           export.export(full, "latex", caption=full_caption)])
    (tmp_path / "t.tex").write_text(doc, encoding="ascii")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")


# --- the paper table's cells -----------------------------------------------------------------------
def test_two_d_cells_read_nx_then_nu_with_ci_and_prediction():
    frame = synthetic_frame(presets=("mup",), discretizations=("euler",), n_u=(64, 128, 256),
                            n_x=(16, 32, 64), seeds=2, steps=(1,))
    table = export.paper_table(frame, design="2d", n_boot=100)
    cell = table["‖y‖"].item()
    number = r"[\-0-9.]+±[0-9.]+"
    words = r"(\w+/\w+, as predicted \(|agrees with )"
    assert re.match(rf"N_x\^{number}·N_u\^{number} {words}N_x\^1\.5·N_u\^-1", cell), cell
    assert cell.endswith("✓"), cell


def test_too_few_points_cell_says_so():
    frame = synthetic_frame(presets=("sp",), discretizations=("zoh",), n_u=(32, 64), steps=(1,))
    table = export.paper_table(frame, n_boot=0)
    assert table["‖x‖"].item() == "too few points (n=6)"


# --- the CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def app(monkeypatch):
    """A typer app with only `slopes`, reading a synthetic frame instead of the store."""
    from ssmscope.runs.store import db as store

    cells = (("x", "value"), ("y", "value"), ("x", "delta_init"), ("y", "delta_init"), ("cx", "value"))
    frame = synthetic_frame(seeds=3, steps=(0, 4), cells=cells).with_columns(spec=pl.lit("paper-figure"))
    calls = []

    def load(db_path, filters=None):
        calls.append((db_path, filters))
        return frame

    monkeypatch.setattr(store, "load_probe_frame", load)
    application = typer.Typer(cls=OneLineErrors)
    application.callback()(lambda: None)
    cli_slopes.register(application)
    application.calls = calls
    return application


def _run(app, *args):
    return CliRunner().invoke(app, ["slopes", *args])


def test_cli_prints_the_paper_table_as_markdown(app):
    result = _run(app, "--format", "md", "--n-boot", "100")
    assert result.exit_code == 0, result.output
    header = "| preset | discretization | optimizer | step | ‖x‖ | ‖y‖ | ‖Δx‖ | ‖Δy‖ |"
    assert result.output.startswith(header)
    assert "mup-ssm" in result.output and "✓" in result.output


def test_cli_where_filters_push_run_keys_to_the_store_and_apply_all(app, tmp_path):
    out = tmp_path / "s.csv"
    result = _run(app, "--format", "csv", "--table", "full", "--where", "preset=mup-ssm and step<=2",
                  "--where", "site in (x, y)", "--out", str(out), "--n-boot", "50")
    assert result.exit_code == 0, result.output
    assert app.calls[-1][1] == {"preset": ["mup-ssm"]}  # step and site are not store filter columns
    back = pl.read_csv(out)
    assert set(back["preset"]) == {"mup-ssm"} and set(back["step"]) == {0} and set(back["site"]) == {"x", "y"}
    every = {"estimate", "se", "ci_low", "ci_high", "n_points", "n_seeds", "verdict", "agreement"}
    assert every <= set(back.columns)


def test_cli_writes_parquet_with_every_column(app, tmp_path):
    out = tmp_path / "p.parquet"
    result = _run(app, "--format", "parquet", "--out", str(out), "--table", "full", "--width", "joint",
                  "--n-boot", "0")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).columns[:5] == ["preset", "discretization", "optimizer", "lr", "spec"]


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "xlsx"], "format='xlsx'"),
    (["--format", "parquet"], "give --out FILE"),
    (["--format", "md", "--convention", "l3"], "convention='l3'"),
    (["--format", "md", "--width", "3d"], "Invalid value for '--width': Value error, '3d' is not one of"),
    (["--format", "md", "--table", "half"], "Invalid value for '--table': Value error, 'half' is not one of"),
    (["--format", "md", "--step", "soon"], "--step='soon'"),
    (["--format", "md", "--where", "colour=red"], "unknown key 'colour'"),
    (["--format", "md", "--where", "n_u>=big"], "n_u takes an integer"),
    (["--format", "md", "--where", "preset=nobody"], "no probe rows match"),
    (["--format", "md", "--where", "site=cx"], "nothing to fit"),
])
def test_cli_user_errors_are_one_line_and_exit_2(app, args, message):
    result = _run(app, *args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_suggests_another_width_when_no_run_is_joint(app, monkeypatch):
    from ssmscope.runs.store import db as store

    grid = synthetic_frame(n_u=(64, 128, 256), n_x=(8, 16, 32), seeds=2, steps=(1,))
    monkeypatch.setattr(store, "load_probe_frame", lambda db_path, filters=None: grid)
    result = _run(app, "--format", "md")
    assert result.exit_code == 2 and "use --width 2d" in result.output
    result = _run(app, "--format", "md", "--width", "2d", "--n-boot", "50")
    assert result.exit_code == 0 and "N<sub>x</sub><sup>" in result.output


def test_cli_reads_a_real_store_with_run_filters_pushed_into_its_sql(tmp_path):
    """No monkeypatch: shards → runs.store.ingest → load_probe_frame → the command."""
    from ssmscope.runs.store.db import ingest
    from ssmscope.runs.store.shards import write_shard

    frame = synthetic_frame(presets=("sp", "mup-ssm"), discretizations=("zoh",), n_u=(32, 64, 128), seeds=2,
                            steps=(0, 2))
    for (run_id,), rows in frame.group_by("run_id"):
        meta = rows.row(0, named=True)
        run = {k: meta[k] for k in ("preset", "discretization", "optimizer", "lr", "seed", "n_u", "n_x",
                                    "status")}
        write_shard(tmp_path / "shards", {**run, "run_id": run_id, "spec": "test", "finished_at": "t"},
                    rows.drop(*run, "run_id").to_dicts(), [])
    db = tmp_path / "store.duckdb"
    ingest(db, tmp_path / "shards")
    application = typer.Typer(cls=OneLineErrors)
    application.callback()(lambda: None)
    cli_slopes.register(application)
    result = _run(application, "--db", str(db), "--format", "json", "--where", "preset=mup-ssm",
                  "--n-boot", "50")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["preset"] for r in rows} == {"mup-ssm"} and {r["step"] for r in rows} == {2}
    assert {r["column"] for r in rows} == {"x", "y", "dx", "dy"} and all(r["n_seeds"] == 2 for r in rows)
    missing = _run(application, "--db", str(tmp_path / "none.duckdb"), "--format", "md")
    assert missing.exit_code == 2 and "no store at" in missing.output


def test_parse_filters_types_values_and_splits_and():
    filters = selection.parse_filters(["preset='mup-ssm' and n_u>=64", "lr=0.01", "site!=x,y"])
    assert [(f.column, f.op, f.values) for f in filters] == [
        ("preset", "=", ("mup-ssm",)), ("n_u", ">=", (64,)), ("lr", "=", (0.01,)), ("site", "!=", ("x", "y"))]
    frame = pl.DataFrame({"preset": ["mup-ssm", "sp"], "n_u": [64, 128], "lr": [0.01, 0.01],
                          "site": ["cx", "cx"]})
    assert frame.filter(selection.filter_expr(filters))["preset"].to_list() == ["mup-ssm"]
