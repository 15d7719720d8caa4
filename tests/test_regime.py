"""The linear-response regime of a slope: ρ = ‖Δq‖/‖q_0‖ per probe row, the flag per cell, and its marks."""

from __future__ import annotations

import io

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from ssmscope.runs.analysis import export
from ssmscope.runs.analysis.regime import REGIME_THRESHOLD, attach_regime, response_ratios
from ssmscope.runs.analysis.slopes import fit_slopes, paper_slopes
from ssmscope.runs.analysis.synthetic import synthetic_frame
from ssmscope.runs.cli import slopes as cli_slopes
from ssmscope.runs.cli.main import OneLineErrors

CELLS = (("x", "value"), ("x", "delta_init"), ("y", "value"), ("y", "delta_init"), ("grad_y", "value"))
SEED_FACTOR = {0: 1.0, 1: 1.5, 2: 0.5}  # the median over seeds is the seed-0 value


def with_norms(frame: pl.DataFrame, rms: pl.Expr) -> pl.DataFrame:
    """`frame` with every convention's norm set to `rms` (so ratios are the same in every convention)."""
    return frame.with_columns(rms.alias("_rms")).with_columns(
        (pl.col("_rms") ** 2 * pl.col("count")).alias("sumsq"),
        (pl.col("_rms") * pl.col("n_channels")).alias("channel_norm_sum"),
        (pl.col("_rms") * pl.col("n_tokens")).alias("token_norm_sum")).drop("_rms")


def known_ratios(frame: pl.DataFrame) -> pl.DataFrame:
    """q_0 = 2 at step 0; ‖Δq‖ at step 4 = 2·ρ with ρ = 0.1·(width/32)·(layer + 1)·SEED_FACTOR[seed] for x
    and a tenth of that for y; Δ at step 0 is zero."""
    seed_factor = pl.col("seed").replace_strict(SEED_FACTOR, return_dtype=pl.Float64)
    rho = 0.1 * (pl.col("n_u") / 32) * (pl.col("layer") + 1) * seed_factor
    rho = pl.when(pl.col("site") == "y").then(rho / 10).otherwise(rho)
    value = pl.when(pl.col("step") == 0).then(2.0).otherwise(2.0 + 2.0 * rho)
    delta = pl.when(pl.col("step") == 0).then(0.0).otherwise(2.0 * rho)
    return with_norms(frame, pl.when(pl.col("quantity") == "delta_init").then(delta).otherwise(value))


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    base = synthetic_frame(n_u=(32, 64, 128, 256), presets=("sp",), discretizations=("euler",), steps=(0, 4),
                           layers=2, cells=CELLS, noise=0.0)
    return known_ratios(base)


def test_response_ratio_is_the_update_over_the_initial_norm(frame):
    ratios = response_ratios(frame)
    row = ratios.filter((pl.col("run_id").str.contains("u128")) & pl.col("run_id").str.ends_with("s1")
                        & (pl.col("layer") == 1) & (pl.col("site") == "x") & (pl.col("step") == 4))
    assert row["regime_ratio"].item() == pytest.approx(0.1 * 4 * 2 * 1.5)
    assert ratios.filter(pl.col("step") == 0)["regime_ratio"].to_list() == [0.0] * (4 * 3 * 2 * 2)
    assert "grad_y" not in set(ratios["site"])  # gradients have no Δ


def test_flag_reads_the_median_over_seeds_at_the_largest_width_per_layer(frame):
    slopes = attach_regime(fit_slopes(frame, layers="each", step="last", n_boot=0), frame)
    x = slopes.filter(pl.col("site") == "x").sort("layer", "quantity")
    # largest width 256: ρ = 0.1·8·(layer + 1) → 0.8 (layer 0) and 1.6 (layer 1); value and Δ rows alike
    assert x["regime_ratio"].to_list() == pytest.approx([0.8, 0.8, 1.6, 1.6])
    assert x["regime"].to_list() == ["linear", "linear", "nonlinear", "nonlinear"]
    y = slopes.filter(pl.col("site") == "y")
    assert set(y["regime"]) == {"linear"} and y["regime_ratio"].max() == pytest.approx(0.16)
    grad = slopes.filter(pl.col("site") == "grad_y")
    assert grad["regime_ratio"].is_null().all() and grad["regime"].is_null().all()


def test_layer_mean_cells_take_each_runs_largest_layer(frame):
    slopes = attach_regime(paper_slopes(frame, n_boot=0), frame)
    x = slopes.filter(pl.col("site") == "x")
    assert x["regime_ratio"].to_list() == pytest.approx([1.6, 1.6]) and set(x["regime"]) == {"nonlinear"}


def test_the_threshold_is_a_parameter_and_step_zero_is_linear(frame):
    loose = attach_regime(fit_slopes(frame, step="last", n_boot=0), frame, threshold=2.0)
    assert set(loose["regime"].drop_nulls()) == {"linear"}
    at_init = attach_regime(fit_slopes(frame.filter(pl.col("quantity") == "value"), step=0, n_boot=0), frame)
    assert at_init.filter(pl.col("site") == "x")["regime_ratio"].to_list() == [0.0, 0.0]
    assert REGIME_THRESHOLD == 1.0


def test_diverged_runs_do_not_count_unless_included(frame):
    broken = frame.with_columns(pl.when((pl.col("n_u") == 256) & pl.col("run_id").str.ends_with("s0"))
                                .then(pl.lit("diverged")).otherwise("status").alias("status"))
    slopes = attach_regime(fit_slopes(broken, step="last", n_boot=0), broken)
    x1 = slopes.filter((pl.col("site") == "x") & (pl.col("layer") == 1) & (pl.col("quantity") == "value"))
    assert x1["regime_ratio"].item() == pytest.approx(1.6)  # median of seeds 1, 2: (2.4 + 0.8)/2
    every = attach_regime(fit_slopes(broken, step="last", n_boot=0, include_failed=True), broken,
                          include_failed=True)
    assert every.filter((pl.col("site") == "x") & (pl.col("layer") == 1))["regime_ratio"][0] == pytest.approx(1.6)


def test_per_group_updates_are_divided_by_the_total_initial_norm():
    base = synthetic_frame(n_u=(32, 64, 128), presets=("mup-ssm",), discretizations=("zoh",), steps=(0, 2),
                           layers=1, cells=(("y", "value"), ("y", "delta_init")), groups=("", "W_B"), noise=0.0)
    base = base.filter((pl.col("group") == "") | (pl.col("quantity") == "delta_init"))
    delta = pl.when(pl.col("step") == 0).then(0.0).when(pl.col("group") == "W_B").then(0.5).otherwise(1.5)
    frame = with_norms(base, pl.when(pl.col("quantity") == "value").then(3.0).otherwise(delta))
    ratios = response_ratios(frame).filter(pl.col("step") == 2)
    by_group = dict(ratios.group_by("group").agg(pl.col("regime_ratio").first()).iter_rows())
    assert by_group == pytest.approx({"": 0.5, "W_B": 1 / 6})


def test_param_rows_use_their_own_parameters_initial_norm():
    rows = pl.DataFrame({"run_id": ["r"] * 3, "step": [0, 0, 3], "layer": [0, 0, 0], "site": ["param"] * 3,
                         "quantity": ["value", "value", "delta_init"],
                         "group": ["x_proj_B:w", "x_proj_C:w", "x_proj_B:w"],
                         "sumsq": [4.0, 100.0, 1.0], "count": [1, 1, 1]})
    ratio = response_ratios(rows.with_columns(pl.lit(1.0).alias("token_norm_sum")), "l2")
    assert ratio.filter(pl.col("step") == 3)["regime_ratio"].item() == pytest.approx(0.5)


def test_paper_cells_outside_linear_response_are_marked(frame):
    paper = attach_regime(paper_slopes(frame, n_boot=0), frame)
    md = export.format_paper_table(paper, "markdown")
    assert "[nonlinear: ‖Δ‖/‖q₀‖ = 1.6]" in md["‖x‖"].item() and "nonlinear" not in md["‖y‖"].item()
    tex = export.format_paper_table(paper, "latex")
    assert tex[r"$\|x\|$"].item().endswith(" NL") and "NL" not in tex[r"$\|y\|$"].item()  # short LaTeX cells


def test_cli_reports_the_regime_in_every_table(frame, monkeypatch):
    from ssmscope.runs.store import db as store

    monkeypatch.setattr(store, "load_probe_frame", lambda db_path, filters=None: frame)
    app = typer.Typer(cls=OneLineErrors)
    app.callback()(lambda: None)
    cli_slopes.register(app)
    md = CliRunner().invoke(app, ["slopes", "--format", "md", "--n-boot", "0"])
    assert md.exit_code == 0, md.output
    assert "[nonlinear: ‖Δ‖/‖q₀‖ = 1.6]" in md.output and "regime: nonlinear when" in md.output
    csv = CliRunner().invoke(app, ["slopes", "--format", "csv", "--table", "full", "--n-boot", "0"])
    rows = pl.read_csv(io.StringIO(csv.output))
    assert {"regime_ratio", "regime", "trend"} <= set(rows.columns)
    assert rows.filter((pl.col("site") == "x") & (pl.col("layer") == 1))["regime"].to_list() == ["nonlinear"] * 2
