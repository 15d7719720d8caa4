"""The dashboard under Streamlit's AppTest, against a real tiny store; its figures; `ssmscope app`.

Figures are read back from the plotly chart element (`proto.spec`, the figure's JSON), so each test
checks what would be drawn: which panels, traces, values, flags and axis labels.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import typer
from app_store import (
    COORD_RUNS,
    LR_RUNS,
    Writer,
    app_store,  # noqa: F401  (the session's store fixture)
    copy_sweeps,
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
from ssmscope.runs.analysis import export as export_module
from ssmscope.runs.analysis.slopes import fit_slopes, paper_slopes
from ssmscope.runs.cli import dashboard as cli_app
from ssmscope.runs.cli import slopes as cli_slopes
from ssmscope.runs.store.db import ingest, load_probe_frame, load_runs

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
PAGES = {"runs": "app_pages/runs.py", "coord": "app_pages/coord_check.py", "slopes": "app_pages/slope_table.py",
         "compare": "app_pages/compare.py", "lr": "app_pages/lr_transfer.py", "running": "app_pages/running.py",
         "steps": "app_pages/steps.py"}


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


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The store picker's recent list goes to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("SSMSCOPE_CACHE_DIR", str(tmp_path / "app-cache"))


@pytest.fixture
def runs_frame(app_store: Path) -> pl.DataFrame:  # noqa: F811
    return load_runs(app_store)


# --- every page ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("page", "charts"), [("runs", 2), ("coord", 1), ("slopes", 0), ("compare", 1), ("lr", 3)])
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
    assert meta["panels"] == ["sp · zoh", "sp · euler", "mup · zoh", "mup · euler", "mup-ssm · zoh", "mup-ssm · euler"]
    assert meta["rows"] == ["x", "cx", "dx", "dcx"]  # the state and the S6 readout C·x, not y = C·x + D⊙u
    assert len(mean_values(fig)) == 6 * 4 * 2  # panels × rows × layers
    legend = [t["name"] for t in sorted((t for t in fig["data"] if t.get("showlegend")),
                                        key=lambda t: t.get("legendrank", 1000))]
    assert legend == ["layer 0", "layer 1", "predicted slope", "reference slopes 0, ±½, ±1"]
    assert all("slope s = " in c[2] for t in traces(fig, "mean") for c in t["customdata"])
    # every single-run point names a real run of the sweep, with its config
    ids = {c[0] for t in traces(fig, "runs") for c in t["customdata"]}
    assert ids == set(runs_frame.filter(pl.col("spec") == "app-coord")["run_id"])
    assert traces(fig, "ref") and "RMS per coordinate" in fig["layout"]["yaxis"]["title"]["text"]
    assert fig["layout"]["xaxis"]["ticktext"] == ["16", "32", "64"]  # at log₂ width, labelled with the width


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
    zero = [t for t in traces(fig, "flag") if t["meta"]["row"] in ("dx", "dcx")]
    assert zero and all("norm = 0 at step 0" in c[2] for t in zero for c in t["customdata"])
    assert at.query_params["step"] == "0"


def test_coordinate_check_discretisation_toggle_and_preset_filter(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    at.radio(key="cc_disc").set_value("euler").run()
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["sp", "mup", "mup-ssm"]
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


# --- norm vs step --------------------------------------------------------------------------------
def test_norm_vs_step_draws_one_curve_per_width_from_the_stores_numbers(app_store, monkeypatch):  # noqa: F811
    query = {"sweep": "app-coord", "preset": "sp", "disc": "euler", "row": "x", "layer": "1", "convention": "rms"}
    at = open_app(app_store, monkeypatch, "steps", query)
    fig = figure(at)
    curves = {t["meta"]["width"]: t for t in traces(fig, "step_curve")}
    assert sorted(curves) == [16, 32, 64] and fig["layout"]["yaxis"]["type"] == "log"
    stored = load_probe_frame(app_store, {"spec": "app-coord"}).filter(
        (pl.col("preset") == "sp") & (pl.col("discretization") == "euler") & (pl.col("site") == "x")
        & (pl.col("quantity") == "value") & (pl.col("layer") == 1) & (pl.col("group") == ""))
    for width, trace in curves.items():
        runs = stored.filter(pl.col("n_u") == width)
        assert runs["seed"].n_unique() == 2
        for step, y in zip(trace["x"], trace["y"], strict=True):
            rms = runs.filter(pl.col("step") == step).select((pl.col("sumsq") / pl.col("count")).sqrt())
            assert y == pytest.approx(math.prod(rms.to_series()) ** (1 / rms.height), rel=1e-12)  # geometric mean
        assert list(trace["x"]) == sorted(runs["step"].unique())
    assert {k: at.query_params[k] for k in query} == query
    at.selectbox(key="ns_row").set_value("dcx").run()  # Δ(C·x) = 0 at step 0: not drawn on the log axis
    assert all(list(t["x"]) == [1, 2] for t in traces(figure(at), "step_curve"))
    assert "‖ΔC·x‖" in figure(at)["layout"]["yaxis"]["title"]["text"]


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
    chosen = other.split(" · ")[0]
    at.selectbox(key="runs_run").set_value(chosen).run()
    # the loss figure now draws the chosen run's own losses, as the store holds them
    from ssmscope.runs.store.db import load_losses

    stored = load_losses(app_store, {"run_id": chosen}).sort("step")
    drawn = figure(at, 0)["data"][0]
    assert list(drawn["x"]) == stored["step"].to_list()
    assert list(drawn["y"]) == pytest.approx(stored["train_loss"].to_list(), rel=1e-12, nan_ok=True)
    assert at.query_params["run"] == chosen


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


def test_slope_table_is_compact_numeric_sortable_and_switches_layouts(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "slopes", {"sweep": "app-coord"})
    table = at.dataframe[0].value
    assert list(table.columns) == ["preset", "discretization", "optimizer", "‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"]
    assert list(zip(table["preset"], table["discretization"], strict=True)) == [
        ("sp", "euler"), ("sp", "zoh"), ("mup", "euler"), ("mup", "zoh"), ("mup-ssm", "euler"), ("mup-ssm", "zoh")]
    assert all(str(table[c].dtype) == "float64" for c in ("‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"))  # the columns sort
    paper = paper_slopes(load_probe_frame(app_store, {"spec": "app-coord"}))
    want = paper.filter((pl.col("preset") == "mup") & (pl.col("discretization") == "zoh") & (pl.col("column") == "dx"))
    assert table["‖Δx‖"][3] == pytest.approx(want["estimate"].item())
    html = tables.compact_styled(paper, "agreement")[0].to_html()  # what the cells show over those numbers
    assert tables.AGREEMENT_COLOURS["agrees"] in html and "(−½) ✓" in html
    at.radio(key="st_table").set_value("numeric").run()
    numeric = at.dataframe[0].value
    assert {"quantity", "estimate", "ci_low", "ci_high", "predicted", "verdict", "agreement"} <= set(numeric.columns)
    assert numeric.shape[0] == 6 * 4 and set(numeric["quantity"]) == {"‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"}
    for verdict, agreement in zip(numeric["verdict"], numeric["agreement"], strict=True):
        assert ("as predicted" in verdict or verdict.startswith("agrees with ")) == (agreement == "agrees"), \
            (verdict, agreement)
    at.radio(key="st_table").set_value("full").run()
    full = at.dataframe[0].value
    assert {"verdict", "agreement", "layer"} <= set(full.columns) and full.shape[0] > numeric.shape[0]
    assert list(dict.fromkeys(full["preset"])) == ["sp", "mup", "mup-ssm"]


def test_slope_table_colours_by_stability_by_default_or_by_agreement(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "slopes", {"sweep": "app-coord"})
    assert at.radio(key="st_colour").value == "stability" and at.query_params["colour"] == "stability"
    assert any(c.value.startswith(tables.COLOURING_LEGEND["stability"]) for c in at.caption)
    paper = paper_slopes(load_probe_frame(app_store, {"spec": "app-coord"}))
    compact = export_module.compact_paper(paper)
    verdicts = tables.cell_verdicts(paper, compact)
    for title in ("‖x‖", "‖Δx‖"):  # each cell's colour is its own fit's verdict
        for i, key in enumerate(compact.values.select(compact.keys).rows()):
            want = paper.filter((pl.col("preset") == key[0]) & (pl.col("discretization") == key[1])
                                & (pl.col("column") == {"‖x‖": "x", "‖Δx‖": "dx"}[title]))["verdict"][0]
            assert verdicts[title][i] == want
    html = tables.compact_styled(paper)[0].to_html()
    used = {c for c in tables.STABILITY_COLOURS.values() if c in html}
    agreement = (tables.AGREEMENT_COLOURS["agrees"], tables.AGREEMENT_COLOURS["disagrees"])
    assert used and not any(c in html for c in agreement)
    at.radio(key="st_colour").set_value("agreement").run()
    assert any(c.value.startswith(tables.COLOURING_LEGEND["agreement"]) for c in at.caption)
    assert at.query_params["colour"] == "agreement"


def test_slope_table_opens_on_one_sweep_with_a_width_design_it_supports(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "slopes")
    assert at.selectbox(key="st_sweep").value == "app-lr"  # the sweep finished last (no paper-figure here)
    assert at.selectbox(key="st_width").value == "n_u"  # app-lr varies N_u at N_x = 8: no joint widths
    assert set(at.dataframe[0].value["preset"]) == {"sp", "mup-ssm"}
    at = open_app(app_store, monkeypatch, "slopes", {"sweep": "app-coord", "width": "n_u"})
    warning = next(w.value for w in at.warning if "cannot support" in w.value)
    assert "no N_x holds 3 or more N_u values: at most 1 (16 at N_x = 16)" in warning and "joint (N_u = N_x)" in warning
    assert not at.dataframe and "None" not in warning


def test_the_slope_table_default_sweep_is_paper_figure_when_present_else_the_latest():
    from ssmscope.app.controls import latest_sweep

    runs = pl.DataFrame({"spec": ["a", "b", "b"], "finished_at": ["2026-01-03", "2026-01-01", "2026-01-02"]})
    assert latest_sweep(runs) == "a"
    assert latest_sweep(pl.concat([runs, pl.DataFrame({"spec": ["paper-figure"], "finished_at": ["2020"]})])) == \
        "paper-figure"


def test_tables_name_their_columns_for_reading(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "runs")
    headers = {k: v.get("label") for k, v in json.loads(at.dataframe[0].proto.columns).items()}
    assert {headers[k] for k in ("run_id", "spec", "n_u", "n_x", "last_finite_step", "finished_at")} == {
        "run id", "sweep", "N_u", "N_x", "last finite step", "finished"}
    at = open_app(app_store, monkeypatch, "slopes", {"sweep": "app-coord", "table": "full"})
    full = at.dataframe[0].value
    assert "site" not in full.columns and set(full["quantity"]) >= {"‖x‖", "‖Δy‖", "‖C·x‖"}
    assert "delta_init" not in set(full["quantity"])


def test_width_filters_sort_numerically(app_store, monkeypatch):  # noqa: F811
    assert frames.ordered([256, 32, 64, 1024]) == [32, 64, 256, 1024]
    assert frames.ordered(["b", "a"], ["b"]) == ["b", "a"]
    at = open_app(app_store, monkeypatch, "runs")
    assert at.multiselect(key="runs_n_u").options == ["16", "32", "64"]


def test_slope_table_says_which_presets_are_one_parameterization(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "slopes", {"sweep": "app-coord"})
    notes = [i.value for i in at.info]
    assert notes == ["mup and mup-ssm are the same parameterization for zoh · adam at these widths (every role's "
                     "init, learning-rate and multiplier scale coincide), so their rows coincide."]
    table = at.dataframe[0].value.set_index(["preset", "discretization"])
    # the note is measured, not assumed: those runs are identical, the Euler ones are not
    # (equal to float round-off: the compiled scan's threaded reductions need not add in one order)
    same, other = list(table.loc[("mup", "zoh")]), list(table.loc[("mup-ssm", "zoh")])
    assert [v if isinstance(v, str) else pytest.approx(v, rel=1e-9, nan_ok=True) for v in same] == other
    assert list(table.loc[("mup", "euler")]) != list(table.loc[("mup-ssm", "euler")])
    at.multiselect(key="st_discs").set_value(["euler"]).run()
    assert not at.info


# --- compare -------------------------------------------------------------------------------------
def test_compare_puts_every_selection_on_shared_axes_with_slope_differences(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "compare", {"sweep": "app-coord", "values": "sp,mup,mup-ssm"})
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["sp", "mup", "mup-ssm"]
    assert fig["layout"]["yaxis2"]["matches"] == "y" and fig["layout"]["yaxis3"]["matches"] == "y"  # one y per row
    diff = at.dataframe[0].value
    assert {"mup − sp", "mup-ssm − sp"} <= set(diff.columns) and diff.shape[0] == 4 * 2  # rows × layers
    assert diff["mup − sp"].to_list() == pytest.approx((diff["s [mup]"] - diff["s [sp]"]).to_list())
    at.radio(key="cmp_by").set_value("discretization").run()
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["zoh", "euler"]
    assert {c[4] for t in traces(fig, "runs") for c in t["customdata"]} == {"zoh", "euler"}
    assert "euler − zoh" in at.dataframe[0].value.columns


def test_compare_defaults_to_presets_that_differ_and_notes_those_that_do_not(app_store, monkeypatch):  # noqa: F811
    """Under ZOH + Adam at joint widths µP and µP-SSM are one parameterization: by default only µP-SSM is compared
    with SP; picking µP too gets a note that their differences are 0 by construction. Under Euler all three differ."""
    at = open_app(app_store, monkeypatch, "compare", {"sweep": "app-coord"})
    assert at.multiselect(key="cmp_values").options == ["sp", "mup", "mup-ssm"]
    assert at.multiselect(key="cmp_values").value == ["sp", "mup-ssm"] and not at.info
    assert figure(at)["layout"]["meta"]["panels"] == ["sp", "mup-ssm"]
    at.multiselect(key="cmp_values").set_value(["sp", "mup", "mup-ssm"]).run()
    assert [i.value for i in at.info] == [
        "mup and mup-ssm are one parameterization under zoh · adam at these widths (every role's init, learning-rate "
        "and multiplier scale coincide): their coordinate checks are the same model, and their differences are 0 by "
        "construction."]
    at = open_app(app_store, monkeypatch, "compare", {"sweep": "app-coord", "disc": "euler"})
    assert at.multiselect(key="cmp_values").value == ["sp", "mup", "mup-ssm"] and not at.info


def test_compare_keeps_its_rows_through_the_pick_two_warning(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "compare", {"sweep": "app-coord", "rows": "x,dy"})
    at.multiselect(key="cmp_values").set_value(["mup"]).run()
    assert any("Pick at least two" in w.value for w in at.warning)
    at.multiselect(key="cmp_values").set_value([]).run()
    assert any("none is selected" in w.value for w in at.warning)
    assert at.multiselect(key="cmp_rows").value == ["x", "dy"] and at.query_params["rows"] == "x,dy"
    at.multiselect(key="cmp_values").set_value(["sp", "mup-ssm"]).run()
    assert at.multiselect(key="cmp_rows").value == ["x", "dy"]
    assert figure(at)["layout"]["meta"]["rows"] == ["x", "dy"] and at.dataframe[0].value.shape[0] == 2 * 2


def test_compare_overlays_selections_in_one_panel_with_a_line_style_each(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "compare", {"sweep": "app-coord", "view": "overlay", "rows": "x,dy",
                                                      "values": "sp,mup,mup-ssm"})
    fig = figure(at)
    assert fig["layout"]["meta"]["kind"] == "overlay" and fig["layout"]["meta"]["series"] == ["sp", "mup", "mup-ssm"]
    assert "xaxis3" not in fig["layout"]  # one panel per row: 2 rows
    means = traces(fig, "mean")
    assert len(means) == 3 * 2 * 2  # series × rows × layers
    dash = {t["meta"]["panel"]: t["line"]["dash"] for t in means}
    assert dash == {"sp": "solid", "mup": "dash", "mup-ssm": "dot"}
    assert {t["line"]["color"] for t in means} == {figures.layer_colour(0), figures.layer_colour(1)}


def test_compare_warns_instead_of_comparing_a_selection_with_itself(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "compare", {"sweep": "app-coord", "values": "mup"})
    assert any("with itself" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not at.get("plotly_chart") and not at.dataframe


# --- learning-rate transfer ----------------------------------------------------------------------
def test_lr_transfer_plots_a_curve_per_width_marks_divergence_and_optima(app_store, monkeypatch, runs_frame):  # noqa: F811
    """Every preset side by side (one y range), ★ on its own curve at η*, ✕ above every curve, the loss at the
    optimum against width with its slope, the η* table, and — with one seed — no interval, and the reason."""
    from ssmscope.runs.analysis.transfer import drift as drift_of
    from ssmscope.runs.analysis.transfer import final_losses, optima
    from ssmscope.runs.store.db import load_losses

    at = open_app(app_store, monkeypatch, "lr")
    fig = figure(at, 0)
    assert fig["layout"]["meta"]["presets"] == ["sp", "mup-ssm"]
    curves = traces(fig, "transfer")
    assert sorted((t["meta"]["preset"], t["meta"]["width"]) for t in curves) == sorted(
        (p, w) for p in ("sp", "mup-ssm") for w in (16, 32, 64))
    assert all(t["x"] == pytest.approx([math.log2(0.003), math.log2(0.03)]) for t in curves)
    diverged = traces(fig, "diverged")
    assert diverged and all(t["x"] == pytest.approx([math.log2(10.0)]) for t in diverged)
    top = fig["layout"]["yaxis"]["range"][1]
    assert all(y > max(max(c["y"]) for c in curves) and y <= top for t in diverged for y in t["y"])
    # each ★ lies on its own curve: the curve's value at η*, linear in log2 lr between its grid points
    final = final_losses(load_losses(app_store, {"spec": "app-lr"}))
    expected = optima(final)
    stars = traces(fig, "optimum")
    assert len(stars) == 6
    for star in stars:
        curve = next(c for c in curves if c["meta"] == {**star["meta"], "kind": "transfer"})
        assert star["y"][0] == pytest.approx(float(np.interp(star["x"][0], curve["x"], curve["y"])), rel=1e-12)
        row = expected.filter((pl.col("preset") == star["meta"]["preset"])
                              & (pl.col("width") == star["meta"]["width"])).row(0, named=True)
        assert star["x"][0] == pytest.approx(row["log2_lr_opt"])
    # is wider better: the loss at each width's optimum, the store's own numbers
    wider = traces(figure(at, 1), "loss-at-optimum")
    for t in wider:
        rows = expected.filter(pl.col("preset") == t["meta"]["preset"]).sort("width")
        assert t["y"] == pytest.approx(rows["loss_at_opt"].to_list())
    eta = at.dataframe[0].value
    assert list(eta.columns) == ["width", "sp · zoh · adam", "mup-ssm · zoh · adam"] and len(eta) == 3
    drift = at.dataframe[1].value
    assert {"drift", "loss_slope", "loss_ci_low"} <= set(drift.columns) and drift.shape[0] == 2
    one_seed = drift_of(expected, final)
    assert one_seed["loss_ci_low"].is_nan().all()  # one seed: no interval (never a zero-width one)
    assert any("no CI: one seed per width" in c.value for c in at.caption)
    # the readout probes' split, at init, per preset: input and readout sides (and the shared tied matrix)
    split = traces(figure(at, 2), "readout-split")
    assert {(t["meta"]["preset"], t["meta"]["group"]) for t in split} == {
        (p, g) for p in ("sp", "mup-ssm") for g in ("input", "readout", "shared")}
    at.radio(key="lr_loss").set_value("train_loss").run()
    assert figure(at, 0)["layout"]["yaxis"]["title"]["text"] == "training loss"


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
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "viewer"  # no Deploy button
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


# --- coordinate check: display options -----------------------------------------------------------
def test_coordinate_check_y_range_per_row_by_default_or_per_panel(app_store, monkeypatch):  # noqa: F811
    """One y range per row by default: µP-SSM's small wiggles are drawn on SP's scale, not blown up to fill a panel."""
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    layout = figure(at)["layout"]
    assert layout["meta"]["y_range"] == "row" and at.query_params["y"] == "row"
    for i in range(4):  # 4 rows × 6 panels: every panel of a row matches the row's first y axis
        first = 6 * i + 1
        head = "y" if first == 1 else f"y{first}"
        assert all(layout[f"yaxis{first + j}"]["matches"] == head for j in range(1, 6)), i
    at.radio(key="cc_y").set_value("panel").run()
    layout = figure(at)["layout"]
    assert "matches" not in layout["yaxis2"] and layout["yaxis2"]["range"] != layout["yaxis"]["range"]
    assert at.query_params["y"] == "panel"


def test_coordinate_check_says_what_each_row_measures_and_how_much_of_y_is_the_skip(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    caption = next(c.value for c in at.caption if c.value.startswith("Rows: "))
    for title in ("‖x‖", "‖C·x‖", "‖Δx‖", "‖Δ(C·x)‖"):
        assert f"**{title}** = {next(r.meaning for r in frames.ROWS if r.title == title)}" in caption
    assert "D⊙u" in caption
    frame = load_probe_frame(app_store, {"spec": "app-coord"})
    ratio = frames.readout_ratio(frame, "rms", 2)
    rms = frame.filter((pl.col("step") == 2) & (pl.col("quantity") == "value") & (pl.col("group") == "")).with_columns(
        (pl.col("sumsq") / pl.col("count")).sqrt().alias("rms"))
    by_run = rms.pivot("site", index=["run_id", "layer"], values="rms")
    assert ratio == pytest.approx((by_run["y"] / by_run["cx"]).median())  # the store's own numbers
    assert f"‖y‖ is {ratio:.3g}× ‖C·x‖" in caption
    at.multiselect(key="cc_rows").set_value(["y", "dy"]).run()  # y and Δy: one click away, named with the skip
    caption = next(c.value for c in at.caption if c.value.startswith("Rows: "))
    assert "**‖y‖** = the S6 output C·x + D⊙u" in caption and figure(at)["layout"]["meta"]["rows"] == ["y", "dy"]


def test_coordinate_check_notes_presets_that_are_one_parameterization(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    notes = [i.value for i in at.info]
    assert notes == ["mup and mup-ssm are one parameterization under zoh · adam at these widths (every role's init, "
                     "learning-rate and multiplier scale coincide): their columns show the same model, alike by "
                     "construction."]
    at.radio(key="cc_disc").set_value("euler").run()  # under Euler they differ
    assert not at.info
    at.radio(key="cc_disc").set_value("zoh").run()
    at.multiselect(key="cc_presets").set_value(["sp", "mup"]).run()
    assert not at.info


def test_coordinate_check_keeps_side_by_side_after_the_per_step_layout(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    assert at.radio(key="cc_disc").value == "side by side"
    at.radio(key="cc_layout").set_value("steps").run()
    assert at.radio(key="cc_disc").value == "zoh"  # one discretisation per step layout
    at.radio(key="cc_layout").set_value("presets").run()
    assert at.radio(key="cc_disc").value == "side by side" and len(figure(at)["layout"]["meta"]["panels"]) == 6


def test_coordinate_check_hovers_on_the_mean_unless_asked_for_single_runs(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord"})
    fig = figure(at)
    assert all(t["hoverinfo"] == "skip" for t in traces(fig, "runs"))
    assert all("mean log₂" in t["hovertemplate"] for t in traces(fig, "mean"))
    at.toggle(key="cc_hover").set_value(True).run()
    assert all("run %{customdata[0]}" in t["hovertemplate"] for t in traces(figure(at), "runs"))


def test_coordinate_check_draws_fitted_and_predicted_slope_lines_per_layer(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord", "fit": "1", "pred": "1"})
    fig = figure(at)
    fits = {(t["meta"]["panel"], t["meta"]["row"], t["meta"]["layer"]): t for t in traces(fig, "fit_line")}
    preds = {(t["meta"]["panel"], t["meta"]["row"], t["meta"]["layer"]): t for t in traces(fig, "pred_line")}
    assert len(fits) == len(preds) == 6 * 4 * 2
    slopes = fit_slopes(load_probe_frame(app_store, {"spec": "app-coord"}))
    rec = slopes.filter((pl.col("preset") == "sp") & (pl.col("discretization") == "euler") & (pl.col("site") == "cx")
                        & (pl.col("quantity") == "delta_init") & (pl.col("layer") == 1) & (pl.col("step") == 2)
                        & (pl.col("group") == "")).row(0, named=True)
    line = fits[("sp · euler", "dcx", 1)]
    assert (line["y"][1] - line["y"][0]) / (line["x"][1] - line["x"][0]) == pytest.approx(rec["estimate"])
    assert line["y"][0] == pytest.approx(rec["intercept"] + rec["estimate"] * line["x"][0])
    pred = preds[("sp · euler", "dcx", 1)]
    assert (pred["y"][1] - pred["y"][0]) / (pred["x"][1] - pred["x"][0]) == pytest.approx(rec["predicted"])
    at.toggle(key="cc_fit").set_value(False).run()
    at.toggle(key="cc_pred").set_value(False).run()
    fig = figure(at)
    assert not traces(fig, "fit_line") and not traces(fig, "pred_line")


def test_coordinate_check_puts_steps_side_by_side(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord", "presets": "mup-ssm", "disc": "zoh"})
    by_step = {}
    for step in (0, 1, 2):
        at.select_slider(key="cc_step").set_value(step).run()
        by_step[step] = mean_values(figure(at))
    at.radio(key="cc_layout").set_value("steps").run()  # the preset shown so far stays
    fig = figure(at)
    assert fig["layout"]["meta"]["panels"] == ["step 0", "step 1", "step 2"] and at.query_params["preset"] == "mup-ssm"
    means = mean_values(fig)
    for step in (1, 2):  # the same means as the one-step view of that step
        assert means[(f"step {step}", "x", 0)] == pytest.approx(by_step[step][("mup-ssm", "x", 0)])
    assert ("step 0", "dx", 0) not in means  # Δ = 0 at step 0: flagged, not drawn
    at.multiselect(key="cc_steps").set_value([0, 2]).run()
    assert figure(at)["layout"]["meta"]["panels"] == ["step 0", "step 2"] and at.query_params["steps"] == "0,2"


def test_coordinate_check_slope_table_lists_what_is_plotted_by_name(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord", "presets": "sp", "disc": "zoh",
                                                    "rows": "dx,grad_y"})
    table = at.dataframe[0].value
    assert set(table["panel"]) == {"sp"} and list(dict.fromkeys(table["quantity"])) == ["‖Δx‖", "‖∂L/∂y‖"]
    assert table.shape[0] == 2 * 2  # rows × layers, nothing else
    assert "delta_init" not in table.to_string() and "None" not in table.to_string()
    assert set(table[table["quantity"] == "‖Δx‖"]["predicted"]) == {"+½"}  # SP · ZOH · Adam: Δx ∝ width^½
    assert all(v.endswith(("as predicted", "no prediction", "within its CI", "±0.15")) or "; predicted" in v
               for v in table["verdict"])
    at.multiselect(key="cc_rows").set_value(["dx", "out"]).run()  # the block output has no prediction
    table = at.dataframe[0].value
    assert set(table[table["quantity"] == "‖out‖"]["predicted"]) == {"no prediction"}


# --- runs: deep link, ticks, shared filters, URL fallbacks ---------------------------------------
def test_the_app_root_opens_the_runs_page(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch)
    assert [t.value for t in at.title] == ["Runs"]
    assert at.selectbox(key="runs_sweep").value == "*"  # "all sweeps" is a value, never the empty placeholder


def test_run_curves_and_losses_have_integer_step_ticks():
    loss = figures.loss_figure(pl.DataFrame({"step": [0, 1, 2], "train_loss": [3.0, 2.0, 1.0],
                                             "eval_loss": [None, None, 1.5]}))
    assert loss.layout.xaxis.dtick == 1 and loss.layout.xaxis.tickformat == "d"
    long = figures.step_ticks(list(range(121)))
    assert long["dtick"] == 20 and isinstance(long["dtick"], int)


def test_filters_chosen_on_runs_carry_over_to_the_other_pages(app_store, monkeypatch):  # noqa: F811
    at = open_app(app_store, monkeypatch, "runs")
    at.selectbox(key="runs_sweep").set_value("app-coord").run()
    at.multiselect(key="runs_preset").set_value(["mup-ssm"]).run()
    at.query_params = {}
    at.switch_page(PAGES["coord"]).run()
    assert figure(at)["layout"]["meta"]["panels"] == ["mup-ssm · zoh", "mup-ssm · euler"]
    at.switch_page(PAGES["slopes"]).run()
    assert set(at.dataframe[0].value["preset"]) == {"mup-ssm"}


@pytest.mark.parametrize(("value", "expected"), [("nonsense", ["sp", "mup", "mup-ssm"]), ("sp,nonsense", ["sp"]),
                                                 ("", [])])
def test_a_url_list_keeps_its_valid_values_or_falls_back_to_the_default(app_store, monkeypatch, value, expected):  # noqa: F811
    at = open_app(app_store, monkeypatch, "coord", {"sweep": "app-coord", "presets": value})
    assert at.multiselect(key="cc_presets").value == expected


def test_page_scripts_hold_no_bare_strings_that_streamlit_would_print():
    """Streamlit's "magic" writes any bare string statement of a page script onto the page."""
    import ast

    for path in [MAIN, *MAIN.parent.joinpath("app_pages").glob("*.py")]:
        body = ast.parse(path.read_text()).body[1:]  # the module docstring is not printed
        bare = [n.lineno for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)]
        assert not bare, f"{path.name}: bare strings on lines {bare}"


# --- the store picker, a store being written, live mode ------------------------------------------
def _sidebar_counts(at: AppTest) -> str:
    return next(c.value for c in at.sidebar.caption if "probe rows" in c.value)


def test_store_picker_opens_another_store_and_remembers_it(app_store, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("SSMSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    other = copy_sweeps(app_store, tmp_path / "lr-only", {"app-lr"})
    at = open_app(app_store, monkeypatch, "runs")
    assert _sidebar_counts(at).startswith(f"{COORD_RUNS + LR_RUNS} runs")
    at.text_input(key="store_path").input(str(tmp_path / "missing.duckdb"))
    at.get("form_submit_button")[0].click().run()
    assert any("no file at" in e.value for e in at.sidebar.error) and _sidebar_counts(at).startswith("54 runs")
    at.text_input(key="store_path").input(str(other.parent))  # the folder that holds ssmscope.duckdb
    at.get("form_submit_button")[0].click().run()
    assert not at.exception and _sidebar_counts(at).startswith(f"{LR_RUNS} runs")
    assert at.dataframe[0].value.shape[0] == LR_RUNS
    recent = json.loads((tmp_path / "cache" / "recent-stores.json").read_text())
    assert recent == [str(other.resolve()), str(app_store)]  # the store the session started on, then the new one
    at.selectbox(key="store_recent").set_value(str(app_store)).run()  # back through the recent list
    assert _sidebar_counts(at).startswith(f"{COORD_RUNS + LR_RUNS} runs")


def test_a_file_that_is_not_a_store_is_refused_in_one_line(tmp_path):
    from ssmscope.app import stores

    garbage = make_garbage(tmp_path / "g.duckdb")
    path, problem = stores.check_store_path(str(garbage))
    assert path is None and "cannot be opened as an ssmscope store" in problem and "\n" not in problem
    assert stores.check_store_path(str(tmp_path))[1].endswith("give the store's .duckdb file")
    assert "give the path" in stores.check_store_path("  ")[1]


def test_recent_stores_survive_an_unwritable_cache(monkeypatch, tmp_path):
    from ssmscope.app import stores

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("SSMSCOPE_CACHE_DIR", str(blocked / "cache"))
    assert stores.remember("/a.duckdb", ["/b.duckdb", "/a.duckdb"]) == ["/a.duckdb", "/b.duckdb"]
    assert stores.load_recent() == []


def test_while_a_sweep_writes_the_store_the_last_read_stays_on_screen(app_store, monkeypatch, tmp_path):  # noqa: F811
    db = copy_sweeps(app_store, tmp_path / "copy", {"app-coord"})
    at = open_app(db, monkeypatch, "coord", {"sweep": "app-coord"})
    before = mean_values(figure(at))
    with Writer(db, write=True):  # another process writes the store and holds it, as an ingest does
        at.run()
        assert not at.exception and not at.error
        assert any("Updating" in i.value for i in at.sidebar.info)
        assert mean_values(figure(at)) == before  # the cached frames of the last readable version
    at.run()
    assert not at.sidebar.info and mean_values(figure(at)) == before


# --- hostile URLs ------------------------------------------------------------------------------------
HOSTILE = {
    "superscript-two": "²",  # str.isdigit() is True, int() raises
    "arabic-digit": "٣",
    "fullwidth-digits": "１０",
    "5000-digits": "9" * 5000,  # int() of it raises (Python's digit limit)
    "nan": "nan",
    "inf": "inf",
    "negative": "-1",
    "huge-float": "1e999",
    "long-text": "x" * 20000,
    "markup": "`**<b>x</b>**`$$\\frac{1}{0}$$",
    "control-chars": "a\x00\nb",
    "unknown-name": "app-nope",
    "list-junk": ",,nope,",
}
# Parameters a page reads only in another layout or view than its default (the rest are found by opening the page).
LAYOUT_PARAMS = {"coord": ["layout", "preset", "steps"], "compare": ["bands", "preset", "disc"]}
GLOBAL_PARAMS = ["live", "every"]
TITLES = {"runs": "Runs", "coord": "Coordinate check", "slopes": "Slope table", "compare": "Compare",
          "lr": "Learning-rate transfer", "running": "Running exponents", "steps": "Norm vs step"}


def _url_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if w.value.startswith("URL parameter")]


FIRST_RUN_PAGES = ("runs", "compare")
"""Pages AppTest can open in a session's first run: before a run it knows a page only by its file name, and these
two are the pages whose URL path is their file name."""


def open_with_url(db: Path, monkeypatch: pytest.MonkeyPatch, page: str,
                  query: dict[str, str | list[str]]) -> tuple[AppTest, list[str]]:
    """`page` opened from a link with `query`: (the app, its URL warnings). Every selection of the page is new to
    the session, so it reads the URL. On FIRST_RUN_PAGES so is the sidebar's live mode (the session's first run);
    the other pages are opened after a first run on Runs without a query."""
    monkeypatch.setenv("SSMSCOPE_DB", str(db))
    at = AppTest.from_file(str(MAIN), default_timeout=120)
    if page not in FIRST_RUN_PAGES:
        at.run()
    at.query_params = dict(query)
    at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and at.title[0].value == TITLES[page], "the app is on the linked page"
    return at, _url_warnings(at)


@functools.cache
def _page_params(db: Path, page: str) -> tuple[str, ...]:
    """The query parameters `page` writes when opened without any (its selections), plus LAYOUT_PARAMS."""
    with pytest.MonkeyPatch.context() as mp:
        at = open_app(db, mp, page)
    return tuple(dict.fromkeys([*at.query_params, *LAYOUT_PARAMS.get(page, [])]))


@pytest.mark.parametrize("page", list(PAGES))
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_every_query_parameter_of_every_page_survives_a_hostile_value_and_is_named(app_store, monkeypatch,  # noqa: F811
                                                                                   page, kind):
    """Every parameter of the page (and live/every) set to one hostile value at once: no exception, and each
    parameter the page read gets its own one-line warning quoting the value (cut short), not a silent default."""
    value = HOSTILE[kind]
    params = [*_page_params(app_store, page), *GLOBAL_PARAMS]
    at, warnings = open_with_url(app_store, monkeypatch, page, {name: value for name in params})
    assert all("\n" not in w and len(w) < 1000 for w in warnings), warnings  # one line each; long values cut
    named = {w.split("**")[1] for w in warnings}
    read = [n for n in _page_params(app_store, page) if n not in LAYOUT_PARAMS.get(page, [])]
    if page in FIRST_RUN_PAGES:
        read += GLOBAL_PARAMS
    assert set(read) <= named, f"not named: {set(read) - named}"
    assert at.toggle(key="ssmscope_live").value is False
    assert "every" not in at.query_params and "live" not in at.query_params  # the URL holds what is shown


@pytest.mark.parametrize("page", FIRST_RUN_PAGES)
def test_repeated_and_unknown_query_parameters_are_harmless(app_store, monkeypatch, page):  # noqa: F811
    params = _page_params(app_store, page)
    query = {name: ["nope", "²", ""] for name in params} | {"live": ["1", "1"], "every": ["5", "2"],
                                                           "no-such-parameter": "1", "": "x"}
    at, warnings = open_with_url(app_store, monkeypatch, page, query)
    assert any("**every**" in w and "given 2 times" in w and "last one is used" in w for w in warnings), warnings
    assert any("given 3 times" in w for w in warnings), warnings
    assert at.toggle(key="ssmscope_live").value is True and at.query_params["every"] in ("2", ["2"])


@pytest.mark.parametrize(("query", "message"), [
    ({"live": "1", "every": "²"}, "**every** = `²`: not one of 2, 5, 10, 30 (seconds); checking every 5 s"),
    ({"live": "1", "every": "1" * 5000}, "**every** = `" + "1" * 40 + "…`"),
    ({"live": "yes"}, "**live** = `yes`: not `0` or `1`; live mode stays off"),
])
def test_a_bad_live_interval_is_named_and_the_default_used(app_store, monkeypatch, query, message):  # noqa: F811
    monkeypatch.setenv("SSMSCOPE_DB", str(app_store))
    at = AppTest.from_file(str(MAIN), default_timeout=120)
    at.query_params = query
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(message in w.value for w in at.sidebar.warning), [w.value for w in at.sidebar.warning]
    live = query["live"] == "1"
    assert at.toggle(key="ssmscope_live").value is live
    if live:
        assert at.select_slider(key="ssmscope_live_every").value == 5 and at.query_params["every"] in ("5", ["5"])


@pytest.mark.parametrize(("query", "message"), [
    ({"sweep": "app-nope"}, "**sweep** = `app-nope`: not one of `app-coord`, `app-lr`; showing `app-coord (36 runs)`"),
    ({"sweep": "app-coord", "presets": "sp,nope"}, "**presets** = `nope`: not one of `sp`, `mup`, `mup-ssm`; the "
     "others are kept"),
    ({"sweep": "app-coord", "refs": "2"}, "**refs** = `2`: not one of `0`, `1`; showing on"),
    ({"sweep": "app-coord", "step": "-1"}, "**step** = `-1`: not one of `0`, `1`, `2`; showing `2`"),
])
def test_an_invalid_url_value_is_named_with_what_is_shown_instead(app_store, monkeypatch, query, message):  # noqa: F811
    at, warnings = open_with_url(app_store, monkeypatch, "coord", query)
    assert any(message in w for w in warnings), warnings
    at.run()  # the user's next interaction: the URL now holds what is shown, so nothing to warn about
    assert not _url_warnings(at)


def test_live_mode_comes_from_the_url_and_stays_in_it(app_store, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SSMSCOPE_DB", str(app_store))
    at = AppTest.from_file(str(MAIN), default_timeout=120)
    at.query_params = {"live": "1", "every": "2"}
    at.run()
    assert not at.exception
    assert at.toggle(key="ssmscope_live").value is True
    assert at.query_params["live"] == "1" and at.query_params["every"] == "2"
    assert any(c.value.startswith("Live · checked ") and c.value.endswith("(every 2 s)") for c in at.sidebar.caption)
    at.toggle(key="ssmscope_live").set_value(False).run()
    assert "live" not in at.query_params
    assert not any("checked" in c.value for c in at.sidebar.caption)


# --- figure export ---------------------------------------------------------------------------------
def test_one_render_offers_png_svg_and_pdf_together(app_store, monkeypatch):  # noqa: F811
    calls = []

    def render(fig, size, formats=figure_export.STATIC_FORMATS):
        calls.append(size)
        return {"png": b"\x89PNG", "svg": b"<svg/>", "pdf": b"%PDF-1.4"}

    monkeypatch.setattr(figure_export, "to_static_all", render)
    monkeypatch.setattr(figure_export, "static_export_problem", lambda: None)
    at = open_app(app_store, monkeypatch, "lr")
    at.selectbox(key="lr__export_size").set_value("column").run()
    at.button(key="lr__export_render").click().run()
    labels = [b.proto.label for b in at.get("download_button") if b.proto.label.startswith("Download ")]
    assert {"Download PNG", "Download SVG", "Download PDF"} <= set(labels)
    assert len(calls) == 1 and calls[0].width_in == 3.3 and calls[0].font_pt == 7 and calls[0].dpi == 300
    at.run()  # the downloads stay for the same figure and size without another render
    assert "Download PDF" in [b.proto.label for b in at.get("download_button")] and len(calls) == 1


@pytest.mark.skipif(figure_export.static_export_problem() is not None, reason="kaleido or a Chromium is missing")
def test_static_export_renders_png_svg_and_a_valid_pdf_in_one_session():
    fig = figures.loss_figure(pl.DataFrame({"step": [0, 1, 2], "train_loss": [3.0, 2.0, 1.0],
                                            "eval_loss": [None, None, 1.5]}))
    files = figure_export.to_static_all(fig, figure_export.SIZES["column"])
    assert files["png"].startswith(b"\x89PNG") and files["svg"].lstrip().startswith(b"<svg")
    assert files["pdf"].startswith(b"%PDF") and files["pdf"].rstrip().endswith(b"%%EOF")
    assert int.from_bytes(files["png"][16:20], "big") == 990  # IHDR width: 3.3 in at 300 dpi


# --- learning-rate transfer: what cannot be computed says why ---------------------------------------
def test_a_drift_without_enough_interior_widths_says_why():
    from ssmscope.runs.analysis.transfer import drift

    optima = pl.DataFrame({"preset": ["sp"] * 3, "discretization": ["zoh"] * 3, "optimizer": ["adam"] * 3,
                           "width": [16, 32, 64], "log2_lr_opt": [-5.0, -6.0, -7.0],
                           "status": ["interior", "interior", "edge_low"], "loss_at_opt": [3.0, 2.9, 2.8]})
    row = drift(optima).row(0, named=True)
    assert row["drift"] == pytest.approx(-1.0) and math.isnan(row["ci_low"])
    assert row["reason"].startswith("no CI: 2 widths with an interior optimum")
    one = drift(optima.with_columns(pl.Series("status", ["interior", "edge_high", "edge_low"]))).row(0, named=True)
    assert math.isnan(one["drift"]) and one["reason"].startswith("no drift: 1 width(s)")
    full = drift(optima.with_columns(pl.Series("status", ["interior"] * 3))).row(0, named=True)
    assert full["reason"] is None and full["ci_low"] == pytest.approx(-1.0) == full["ci_high"]  # exact line: OLS CI


def test_the_dashboard_and_the_analyses_load_without_torch():
    """The same-parameterization check reads presets through the torch-free ssm.presets: app/ pulls no torch in."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from ssmscope.app import controls, data, export, figures, frames, sidebar, stores, tables, widgets\n"
            "from ssmscope.runs.analysis import equivalence, export as table_export\n"
            "assert table_export.coincidence_notes is not None and equivalence.resolve('mup', 'zoh', 'adam')\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- a sweep drawn on two init bases ------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_base_store(tmp_path_factory) -> Path:
    """sp and mup-ssm on joint widths 16, 32, 64, drawn on the `mamba` and the legacy base (grid.bases)."""
    import tomllib

    from conftest import tiny_spec_toml

    from ssmscope.runs.sweeps.spec import parse_spec
    from ssmscope.runs.sweeps.sweep import run_sweep

    data = tomllib.loads(tiny_spec_toml("two-bases", widths=(16, 32, 64)))  # 3 widths: what a slope fit needs
    data["grid"]["bases"] = ["mamba", "ssmscope-v0"]
    db = tmp_path_factory.mktemp("two-bases") / "s.duckdb"
    run_sweep(parse_spec(data, "two-bases"), db, device="cpu", workers=1)
    return db


@pytest.mark.parametrize("page", ["coord", "running"])
def test_a_sweep_on_two_bases_shows_one_base_at_a_time(two_base_store, monkeypatch, page):
    at = open_app(two_base_store, monkeypatch, page if page != "running" else None)
    if page == "running":
        at.switch_page("app_pages/running.py").run()
    chooser = next(s for s in at.selectbox if s.label == "Init base")
    assert sorted(chooser.options[i] for i in range(2)) == ["mamba (6 runs)", "ssmscope-v0 (6 runs)"]
    base = chooser.value
    if page == "coord":  # the running page's selection is what is tested there
        shown = {c[0] for t in traces(figure(at), "runs") for c in t["customdata"]}
        assert shown == set(load_runs(two_base_store).filter(pl.col("init_base") == base)["run_id"])
    chooser.set_value("ssmscope-v0" if base == "mamba" else "mamba").run()
    assert not at.exception and at.query_params.get("base") in (["ssmscope-v0"], ["mamba"], "ssmscope-v0", "mamba")


def test_slope_table_keeps_two_bases_apart(two_base_store, monkeypatch):
    at = open_app(two_base_store, monkeypatch, "slopes", {"sweep": "two-bases"})
    table = at.dataframe[0].value
    assert "init_base" in table.columns
    assert sorted(zip(table["preset"], table["init_base"], strict=True)) == [
        ("mup-ssm", "mamba"), ("mup-ssm", "ssmscope-v0"), ("sp", "mamba"), ("sp", "ssmscope-v0")]
