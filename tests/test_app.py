"""The dashboard under Streamlit's AppTest, against a real tiny store; its figures; `ssmscope app`.

Figures are read back from the plotly chart element (`proto.spec`, the figure's JSON), so each test
checks what would be drawn: which panels, traces, values, flags and axis labels.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import typer
from app_store import (
    COORD_RUNS,
    LR_RUNS,
    Writer,
    app_store,  # noqa: F401  (the session's store fixture)
    make_empty,
    make_foreign,
    make_garbage,
    make_old_schema,
)
from streamlit.runtime.memory_media_file_storage import _calculate_file_id
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from ssmscope.app import export as figure_export
from ssmscope.app import figures, frames, tables
from ssmscope.runs.cli import dashboard as cli_app
from ssmscope.runs.cli import slopes as cli_slopes
from ssmscope.runs.store.db import ingest, load_runs

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
PAGES = {"runs": "app_pages/runs.py", "coord": "app_pages/coord_check.py", "slopes": "app_pages/slope_table.py",
         "compare": "app_pages/compare.py", "lr": "app_pages/lr_transfer.py"}


# --- helpers -------------------------------------------------------------------------------------
def open_app(db: Path, monkeypatch: pytest.MonkeyPatch, page: str | None = None,
             query: dict[str, str] | None = None) -> AppTest:
    """Run the app over `db` and switch to `page` with `query` as the URL's query string."""
    monkeypatch.setenv("SSMSCOPE_DB", str(db))
    at = AppTest.from_file(str(MAIN), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    if page is not None:
        at.query_params = dict(query or {})
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figure(at: AppTest, i: int = 0) -> dict:
    """The i-th plotly figure on the page, as JSON."""
    charts = at.get("plotly_chart")
    assert len(charts) > i, f"expected a chart #{i}, the page has {len(charts)}"
    return json.loads(charts[i].proto.spec)


def traces(fig: dict, kind: str) -> list[dict]:
    """Traces whose meta.kind is `kind` (mean, runs, flag, ref, transfer, diverged, optimum, ...)."""
    return [t for t in fig["data"] if (t.get("meta") or {}).get("kind") == kind]


def mean_values(fig: dict) -> dict[tuple, list[float]]:
    """(panel, row, layer) → the plotted seed means."""
    return {(t["meta"]["panel"], t["meta"]["row"], t["meta"]["layer"]): t["y"] for t in traces(fig, "mean")}


def flagged_run_ids(fig: dict) -> set[str]:
    return {c[0] for t in traces(fig, "flag") for c in t["customdata"]}


@pytest.fixture
def runs_frame(app_store: Path) -> pl.DataFrame:  # noqa: F811
    return load_runs(app_store)


# --- every page ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("page", "charts"), [("runs", 2), ("coord", 1), ("slopes", 0), ("compare", 1), ("lr", 1)])
def test_every_page_renders_the_fixture_store_without_errors(app_store, monkeypatch, page, charts):  # noqa: F811
    at = open_app(app_store, monkeypatch, page)
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == charts
    for i in range(charts):
        assert figure(at, i)["data"], f"chart {i} of {page} has no traces"
    if page in ("slopes", "runs", "lr"):
        assert at.dataframe, "the page shows a table"
    assert at.query_params, "the page's selections are in the URL"


def test_store_has_both_fixture_sweeps(runs_frame):
    assert runs_frame.filter(pl.col("spec") == "app-coord").height == COORD_RUNS
    assert runs_frame.filter(pl.col("spec") == "app-lr").height == LR_RUNS
    assert runs_frame.filter(pl.col("status") == "diverged").height > 0


# --- coordinate check ----------------------------------------------------------------------------
def test_coordinate_check_shows_every_preset_discretisation_row_and_layer(app_store, monkeypatch, runs_frame):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    fig = figure(at)
    meta = fig["layout"]["meta"]
    assert meta["panels"] == ["sp · zoh", "sp · euler", "mup-ssm · zoh", "mup-ssm · euler"]
    assert meta["rows"] == ["x", "y", "dx", "dy"]
    assert len(mean_values(fig)) == 4 * 4 * 2  # panels × rows × layers
    legend = [t["name"] for t in sorted((t for t in fig["data"] if t.get("showlegend")),
                                        key=lambda t: t.get("legendrank", 1000))]
    assert legend == ["layer 0", "layer 1", "reference slopes 0, ±½, ±1"]
    assert all("slope s = " in c[2] for t in traces(fig, "mean") for c in t["customdata"])
    # every single-run point names a real run of the sweep, with its config
    ids = {c[0] for t in traces(fig, "runs") for c in t["customdata"]}
    assert ids == set(runs_frame.filter(pl.col("spec") == "app-coord")["run_id"])
    assert traces(fig, "ref") and "RMS per coordinate" in fig["layout"]["yaxis"]["title"]["text"]
    assert fig["layout"]["xaxis"]["ticktext"][0] == "4 (16)"


def test_coordinate_check_convention_changes_the_plotted_norms_and_the_url(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    before = mean_values(figure(at))
    at.selectbox(key="cc_convention").select("l2").run()
    assert not at.exception
    fig = figure(at)
    after = mean_values(fig)
    assert before.keys() == after.keys()
    assert all(not math.isclose(a[0], b[0]) for a, b in zip(before.values(), after.values(), strict=True))
    assert "₂ over the probe batch" in fig["layout"]["yaxis"]["title"]["text"]
    assert at.query_params["convention"] == "l2"


def test_coordinate_check_step_slider_moves_the_points_and_flags_zero_updates(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    last = mean_values(figure(at))
    at.select_slider(key="cc_step").set_value(0).run()
    fig = figure(at)
    first = mean_values(fig)
    assert first[("sp · zoh", "x", 0)] != last[("sp · zoh", "x", 0)]
    # Δ is 0 at initialisation: no mean is drawn, every point is flagged at the bottom instead of vanishing
    assert ("sp · zoh", "dx", 0) not in first
    zero = [t for t in traces(fig, "flag") if t["meta"]["row"] in ("dx", "dy")]
    assert zero and all("norm = 0 at step 0" in c[2] for t in zero for c in t["customdata"])
    assert at.query_params["step"] == "0"


def test_coordinate_check_discretisation_toggle_and_preset_filter(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    at.radio(key="cc_disc").set_value("euler").run()
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["sp", "mup-ssm"]
    assert {c[4] for t in traces(fig, "runs") for c in t["customdata"]} == {"euler"}
    at.multiselect(key="cc_presets").set_value(["mup-ssm"]).run()
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["mup-ssm"]
    assert {c[3] for t in traces(fig, "runs") for c in t["customdata"]} == {"mup-ssm"}


def test_coordinate_check_restores_its_selection_from_the_url(app_store, monkeypatch):  # noqa: F811
    query = {"sweep": "app-coord", "presets": "mup-ssm", "disc": "zoh", "rows": "x,grad_y", "convention": "token_l2",
             "step": "1", "refs": "0"}
    at = open_app(app_store, monkeypatch, "coord", query)
    assert at.selectbox(key="cc_convention").value == "token_l2"
    assert at.select_slider(key="cc_step").value == 1
    fig = figure(at)
    meta = fig["layout"]["meta"]
    assert (meta["convention"], meta["step"], meta["rows"], meta["panels"]) == ("token_l2", 1, ["x", "grad_y"],
                                                                                ["mup-ssm"])
    assert not traces(fig, "ref")
    assert {k: at.query_params[k] for k in query} == query


def test_coordinate_check_marks_diverged_runs_instead_of_dropping_them(app_store, monkeypatch, runs_frame):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-lr", "config": "adam@10"})
    fig = figure(at)
    diverged = runs_frame.filter((pl.col("spec") == "app-lr") & (pl.col("lr") == 10.0))
    assert diverged["status"].unique().to_list() == ["diverged"]
    assert flagged_run_ids(fig) == set(diverged["run_id"])
    assert any("diverged (last finite step" in c[2] for t in traces(fig, "flag") for c in t["customdata"])
    assert "6 diverged or failed run(s) marked ✕" in " ".join(c.value for c in at.caption)


# --- runs ----------------------------------------------------------------------------------------
def test_runs_page_filters_by_status_and_details_a_diverged_run(app_store, monkeypatch, runs_frame):  # noqa: F811
    at = open_app(app_store, monkeypatch, "runs")
    assert at.dataframe[0].value.shape[0] == runs_frame.height
    at.multiselect(key="runs_status").set_value(["diverged"]).run()
    n_diverged = runs_frame.filter(pl.col("status") == "diverged").height
    assert at.dataframe[0].value.shape[0] == n_diverged
    assert {m.value for m in at.metric if m.label == "diverged"} == {str(n_diverged)}
    assert len(at.selectbox(key="runs_run").options) == n_diverged
    assert any("diverged after step" in w.value for w in at.warning)
    loss, curves = figure(at, 0), figure(at, 1)
    assert traces(loss, "loss") and traces(curves, "run_curve")
    first = at.selectbox(key="runs_run").value
    other = next(o for o in at.selectbox(key="runs_run").options if not o.startswith(first))
    at.selectbox(key="runs_run").set_value(other.split(" · ")[0]).run()
    assert figure(at, 0)["data"][0]["y"] != loss["data"][0]["y"] or figure(at, 1) != curves
    assert at.query_params["run"] == other.split(" · ")[0]


# --- slope table ---------------------------------------------------------------------------------
def _cli_slopes(db: Path, *args: str) -> str:
    cli = typer.Typer()

    @cli.callback()
    def main() -> None: ...

    cli_slopes.register(cli)
    result = CliRunner().invoke(cli, ["slopes", "--db", str(db), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _download_id(at: AppTest, label: str) -> str:
    buttons = [b for b in at.get("download_button") if b.proto.label == label]
    assert len(buttons) == 1, [b.proto.label for b in at.get("download_button")]
    return buttons[0].proto.url


@pytest.mark.parametrize(("fmt", "label", "mime", "suffix"), [
    ("md", "Download Markdown", "text/markdown", "md"),
    ("latex", "Download LaTeX", "application/x-tex", "tex"),
    ("csv", "Download CSV", "text/csv", "csv"),
])
def test_slope_table_downloads_are_what_ssmscope_slopes_writes(app_store, monkeypatch, fmt, label, mime, suffix):  # noqa: F811
    at = open_app(app_store, monkeypatch, "slopes", {"sweep": "app-coord"})
    cli = _cli_slopes(app_store, "--where", "spec=app-coord", "--format", fmt)
    name = f"slopes-paper-app-coord-rms-joint.{suffix}"
    assert _calculate_file_id(cli.encode(), mime, name) in _download_id(at, label)


def test_slope_table_colours_verdicts_and_switches_to_every_cell(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "slopes", {"sweep": "app-coord"})
    paper = at.dataframe[0].value
    assert list(paper.columns[:4]) == ["preset", "discretization", "optimizer", "step"]
    assert paper.shape[0] == 4 and {"‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"} <= set(paper.columns)
    at.radio(key="st_table").set_value("full").run()
    full = at.dataframe[0].value
    assert {"verdict", "agreement", "layer"} <= set(full.columns) and full.shape[0] > paper.shape[0]
    styled = tables.styled(pl.DataFrame({"agreement": ["agrees", "disagrees"], "verdict": ["flat", "grows"]}),
                           cells=["agreement"], verdicts=["verdict"]).to_html()
    assert tables.AGREEMENT_COLOURS["agrees"] in styled and tables.AGREEMENT_COLOURS["disagrees"] in styled


# --- compare -------------------------------------------------------------------------------------
def test_compare_puts_two_selections_on_shared_axes_with_slope_differences(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "compare", {"sweep": "app-coord"})
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["sp", "mup-ssm"]
    assert fig["layout"]["yaxis2"]["matches"] == "y"  # same y range per row
    diff = at.dataframe[0].value
    assert "mup-ssm − sp" in diff.columns and diff.shape[0] == 4 * 2  # rows × layers
    at.radio(key="cmp_by").set_value("discretization").run()
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["zoh", "euler"]
    assert {c[4] for t in traces(fig, "runs") for c in t["customdata"]} == {"zoh", "euler"}
    assert "euler − zoh" in at.dataframe[0].value.columns


# --- learning-rate transfer ----------------------------------------------------------------------
def test_lr_transfer_plots_a_curve_per_width_marks_divergence_and_optima(app_store, monkeypatch, runs_frame):  # noqa: F811
    at = open_app(app_store, monkeypatch, "lr")
    fig = figure(at)
    curves = traces(fig, "transfer")
    assert sorted(t["meta"]["width"] for t in curves) == [16, 32, 64]
    assert all(t["x"] == pytest.approx([math.log2(0.003), math.log2(0.03)]) for t in curves)
    diverged = traces(fig, "diverged")
    assert diverged and all(t["x"] == pytest.approx([math.log2(10.0)]) for t in diverged)
    top = fig["layout"]["yaxis"]["range"][1]
    assert all(y > max(max(c["y"]) for c in curves) and y <= top for t in diverged for y in t["y"])
    assert len(traces(fig, "optimum")) == 3
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("base learning rate (log₂")
    drift = at.dataframe[0].value
    assert drift.shape[0] == 2 and "drift" in drift.columns
    at.selectbox(key="lr_preset").set_value("mup-ssm").run()
    assert [t["y"] for t in traces(figure(at), "transfer")] != [t["y"] for t in curves]
    at.radio(key="lr_loss").set_value("train_loss").run()
    assert figure(at)["layout"]["yaxis"]["title"]["text"] == "training loss"


def test_lr_transfer_explains_which_sweep_fills_an_empty_grid(app_store, monkeypatch, tmp_path):  # noqa: F811
    shards = tmp_path / "shards"
    for shard in (app_store.parent / f"{app_store.name}.shards").iterdir():  # the store's own shard folder
        if shard.is_dir() and not shard.name.startswith(".") and \
                pq.read_table(shard / "runs.parquet", columns=["spec"])["spec"][0].as_py() == "app-coord":
            shutil.copytree(shard, shards / shard.name)
    db = tmp_path / "coord-only.duckdb"
    ingest(db, shards)
    at = open_app(db, monkeypatch, "lr")
    assert not at.get("plotly_chart")
    assert "ssmscope sweep hp-transfer" in at.code[0].value


# --- broken stores -------------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "expected"), [
    (None, "no store at"),
    (make_empty, "has no runs yet"),
    (make_old_schema, "schema version 0"),
    (make_foreign, "not an ssmscope store (missing tables"),
    (make_garbage, "cannot"),
])
def test_a_broken_store_gets_a_message_not_a_traceback(monkeypatch, tmp_path, make, expected):
    db = tmp_path / "store.duckdb"
    if make is not None:
        make(db)
    for page in (None, "coord"):
        at = open_app(db, monkeypatch, page)
        assert not at.exception
        assert any(expected in e.value for e in at.error), [e.value for e in at.error]
        assert not at.get("plotly_chart")
    if make in (None, make_empty):
        assert at.code[0].value == f"ssmscope sweep smoke --db {db}"


def test_a_store_being_written_gets_a_message(monkeypatch, tmp_path):
    db = make_empty(tmp_path / "store.duckdb")
    with Writer(db):
        at = open_app(db, monkeypatch, "runs")
        assert not at.exception
        assert any("being written by another process" in e.value for e in at.error)


# --- figures and exports without Streamlit -------------------------------------------------------
def test_html_export_is_self_contained():
    fig = figures.loss_figure(pl.DataFrame({"step": [0, 1], "train_loss": [2.0, 1.0], "eval_loss": [None, 1.5]}))
    html = figure_export.to_html(fig)
    assert "<html>" in html and "Plotly.newPlot" in html and '<script src="https://cdn.plot.ly' not in html


def test_static_export_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(figure_export.importlib.util, "find_spec", lambda name: None)
    assert "kaleido" in figure_export.static_export_problem()
    monkeypatch.undo()
    monkeypatch.setattr(figure_export, "find_chromium", lambda: None)
    if figure_export.importlib.util.find_spec("kaleido") is not None:
        assert "Chromium" in figure_export.static_export_problem()


def test_width_axes_offer_joint_and_fixed_width_designs():
    runs = pl.DataFrame({"n_u": [16, 32, 64, 64, 128, 256], "n_x": [16, 32, 64, 8, 8, 8]})
    axes = frames.width_axes(runs)
    assert [a.key for a in axes] == ["joint", "n_u@8", "n_x@64"]
    assert axes[0].axis_title == "log₂ width (N_u = N_x)" and axes[1].label == "N_u at N_x = 8 (3 widths)"
    assert axes[1].select(runs)["width"].to_list() == [64, 128, 256]
    assert axes[2].select(runs)["width"].to_list() == [64, 8]


# --- ssmscope app --------------------------------------------------------------------------------
def _cli() -> typer.Typer:
    cli = typer.Typer(pretty_exceptions_enable=False)

    @cli.callback()
    def main() -> None: ...

    cli_app.register(cli)
    return cli


def test_app_command_line_binds_localhost_and_passes_the_store(tmp_path):
    cmd = cli_app.streamlit_command(tmp_path / "s.duckdb", port=8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("app/main.py")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert cmd[-3:] == ["--", "--db", str(tmp_path / "s.duckdb")]
    assert cli_app.url_for("0.0.0.0", 80) == "http://127.0.0.1:80"


@pytest.mark.parametrize("port", ["0", "70000"])
def test_app_command_rejects_a_bad_port_in_one_line(tmp_path, port):
    result = CliRunner().invoke(_cli(), ["app", "--db", str(tmp_path / "s.duckdb"), "--port", port])
    assert result.exit_code == 2
    assert "--port" in result.output and "Traceback" not in result.output


def test_app_command_rejects_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(_cli(), ["app", "--db", str(tmp_path / "s.duckdb"), "--port", str(port)])
    assert result.exit_code == 2
    assert "pick another port" in result.output and "Traceback" not in result.output


def test_app_modules_do_not_import_torch():
    """app/ only shows (STYLE conventions 1 and 12): no module of it imports torch itself."""
    import ast

    root = MAIN.parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path} imports torch"
