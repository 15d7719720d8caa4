"""The learning-rate optimum finder and the drift fit, on synthetic loss curves."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ssmscope.runs.analysis.transfer import drift, optima, parabola_optimum


def _curve(x, centre, depth=1.0):
    return 2.0 + depth * (x - centre) ** 2


@pytest.mark.parametrize("centre", [-9.3, -7.0, -5.5])
def test_parabola_recovers_a_known_minimum(centre):
    x = np.arange(-14, -1, 1.0)
    o = parabola_optimum(x, _curve(x, centre))
    assert o.status == "interior"
    assert o.log2_lr == pytest.approx(centre, abs=1e-9)
    assert o.loss == pytest.approx(2.0, abs=1e-9)


def test_minimum_at_the_grid_edge_is_flagged():
    x = np.arange(-14, -1, 2.0)
    assert parabola_optimum(x, _curve(x, -20)).status == "edge_low"
    assert parabola_optimum(x, _curve(x, 3)).status == "edge_high"


def test_all_diverged_width_has_no_optimum():
    x = np.arange(-6, -1, 1.0)
    o = parabola_optimum(x, np.full_like(x, np.inf))
    assert o.status == "all_diverged" and math.isnan(o.log2_lr)


def test_diverged_right_neighbour_keeps_the_grid_point():
    x = np.arange(-8, -1, 1.0)
    y = _curve(x, -3.2)
    y[x > -3] = np.inf
    o = parabola_optimum(x, y)
    assert o.status == "interior" and o.log2_lr == -3.0


def _synthetic(drift_per_doubling: float, widths=(64, 128, 256, 512), seeds=(0, 1, 2), noise=0.03):
    rng = np.random.default_rng(0)
    rows = []
    x = np.arange(-14, -1, 1.0)
    for w in widths:
        centre = -8.0 + drift_per_doubling * math.log2(w / 64)
        for s in seeds:
            for xi, yi in zip(x, _curve(x, centre) + rng.normal(0, noise, len(x)), strict=True):
                rows.append({"preset": "p", "discretization": "zoh", "optimizer": "adam", "lr": 2**xi,
                             "seed": s, "n_u": w, "n_x": 16, "status": "completed", "loss": yi})
    return pl.DataFrame(rows)


@pytest.mark.parametrize("true_drift", [0.0, -1.0, 0.5])
def test_drift_of_the_optimum_is_recovered_with_a_covering_ci(true_drift):
    final = _synthetic(true_drift)
    opt = optima(final, n_boot=200)
    assert (opt["status"] == "interior").all()
    d = drift(opt, final, n_boot=200).row(0, named=True)
    assert d["drift"] == pytest.approx(true_drift, abs=0.05)
    # the CI covers the truth (up to the parabola's small bias on a discrete grid)
    assert d["ci_low"] - 0.02 <= true_drift <= d["ci_high"] + 0.02
    assert d["ci_high"] - d["ci_low"] < 0.2
    assert d["n_interior"] == 4


def test_one_preset_on_two_init_bases_gets_two_drifts_never_one_pooled():
    """SP on Mamba's constants transfers badly, the same name on another base well: two rows, each its own."""
    final = pl.concat([_synthetic(-1.0).with_columns(pl.lit("mamba").alias("init_base")),
                       _synthetic(0.0).with_columns(pl.lit("ssmscope-v0").alias("init_base"))])
    opt = optima(final, n_boot=50)
    assert opt.height == 8 and set(opt["init_base"]) == {"mamba", "ssmscope-v0"}
    d = {r["init_base"]: r["drift"] for r in drift(opt, final, n_boot=50).iter_rows(named=True)}
    assert d["mamba"] == pytest.approx(-1.0, abs=0.05) and d["ssmscope-v0"] == pytest.approx(0.0, abs=0.05)
    one_base = optima(_synthetic(0.0).with_columns(pl.lit("mamba").alias("init_base")), n_boot=10)
    assert "init_base" not in one_base.columns  # one base: the tables keep their columns


def test_diverged_widths_are_counted_not_fitted():
    final = _synthetic(0.0).with_columns(
        pl.when(pl.col("n_u") == 512).then(float("inf")).otherwise(pl.col("loss")).alias("loss"))
    opt = optima(final, n_boot=50)
    assert opt.filter(pl.col("width") == 512)["status"].item() == "all_diverged"
    d = drift(opt, final, n_boot=50).row(0, named=True)
    assert d["widths_all_diverged"] == 1 and d["n_interior"] == 3
    assert d["drift"] == pytest.approx(0.0, abs=0.05)


TRANSFER_SPEC = {
    "sweep": {"name": "transfer-smoke"},
    "grid": {"widths": [16, 32, 64], "presets": ["mup-ssm"], "discretizations": ["zoh"], "optimizers": ["adam"],
             "lrs": [0.002, 0.02, 0.2, 20.0], "seeds": [0, 1]},
    "train": {"steps": 3, "log_every": 3, "batch": 2, "seq_len": 8, "n_layers": 1, "fixed_batch": False,
              "eval_every": 3, "eval_batches": 1, "grads": False},
}


def test_smoke_transfer_sweep_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from ssmscope.runs.cli.main import app
    from ssmscope.runs.sweeps.spec import parse_spec
    from ssmscope.runs.sweeps.sweep import run_sweep

    db = tmp_path / "store.duckdb"
    report = run_sweep(parse_spec(TRANSFER_SPEC, "transfer-smoke"), db, device="cpu")
    assert sum(report.statuses.values()) == 24
    runner = CliRunner()
    result = runner.invoke(app, ["transfer", "--db", str(db), "--table", "optima", "--format", "csv"])
    assert result.exit_code == 0, result.output
    optima_rows = pl.read_csv(__import__("io").StringIO(result.output.strip()))
    assert sorted(optima_rows["width"].to_list()) == [16, 32, 64]
    assert optima_rows["n_lrs"].to_list() == [4, 4, 4]
    # lr = 20 diverges or is worst at every width: the optimum is never at the top of the grid
    assert (optima_rows["log2_lr_opt"] < math.log2(20.0)).all()
    md = runner.invoke(app, ["transfer", "--db", str(db), "--format", "md"])
    assert md.exit_code == 0 and "| mup-ssm | zoh | adam |" in md.output
    bad = runner.invoke(app, ["transfer", "--db", str(db), "--where", "preset=nope"])
    assert bad.exit_code == 2 and "no runs" in bad.output


def _synthetic_loss_slope(loss_per_doubling: float, seeds=(0, 1, 2), noise=0.02, widths=(64, 128, 256, 512)):
    """Curves whose minimum moves down (or up) by `loss_per_doubling` per doubling of width; η* fixed at 2^-8."""
    rng = np.random.default_rng(1)
    rows = []
    x = np.arange(-14, -1, 1.0)
    for w in widths:
        floor = 3.0 + loss_per_doubling * math.log2(w / 64)
        for s in seeds:
            for xi, yi in zip(x, floor + 0.2 * (x + 8.0) ** 2 + rng.normal(0, noise, len(x)), strict=True):
                rows.append({"preset": "p", "discretization": "zoh", "optimizer": "adam", "lr": 2**xi,
                             "seed": s, "n_u": w, "n_x": 16, "status": "completed", "loss": yi})
    return pl.DataFrame(rows)


@pytest.mark.parametrize("truth", [-0.2, 0.0, 0.1])
def test_the_loss_at_the_optimum_slope_recovers_a_known_exponent_with_a_covering_ci(truth):
    final = _synthetic_loss_slope(truth)
    opt = optima(final, n_boot=300)
    row = drift(opt, final, n_boot=300).row(0, named=True)
    assert row["loss_slope"] == pytest.approx(truth, abs=0.03)
    assert row["loss_ci_low"] <= truth <= row["loss_ci_high"] and row["loss_ci_high"] - row["loss_ci_low"] < 0.1
    assert row["loss_reason"] is None and row["drift"] == pytest.approx(0.0, abs=0.1)
    per_width = opt.sort("width")
    assert per_width["loss_at_opt"].to_list() == pytest.approx([3.0 + truth * k for k in range(4)], abs=0.03)
    assert (per_width["loss_seed_sd"] < 0.05).all() and (per_width["loss_ci_low"] <= per_width["loss_at_opt"]).all()


def test_one_seed_gives_no_interval_and_says_why():
    final = _synthetic_loss_slope(-0.1, seeds=(0,))
    row = drift(optima(final, n_boot=100), final, n_boot=100).row(0, named=True)
    assert math.isfinite(row["drift"]) and math.isfinite(row["loss_slope"])  # the numbers are there
    assert all(math.isnan(row[k]) for k in ("ci_low", "ci_high", "loss_ci_low", "loss_ci_high"))  # no [x, x]
    assert row["reason"] == row["loss_reason"] == ("no CI: one seed per width (a seed bootstrap needs 2 or more; "
                                                   "rerun with more seeds)")


def test_eta_table_has_one_row_per_width_and_marks_edges():
    from ssmscope.runs.analysis.transfer import eta_table

    flat, falling = _synthetic(0.0), _synthetic(-1.0).with_columns(pl.lit("q").alias("preset"))
    table = eta_table(optima(pl.concat([flat, falling]), n_boot=50))
    assert table.columns == ["width", "p · zoh · adam", "q · zoh · adam"] and table["width"].to_list() == [64, 128,
                                                                                                          256, 512]
    assert [float(c) for c in table["p · zoh · adam"]] == pytest.approx([2**-8] * 4, rel=0.15)
    assert [float(c) for c in table["q · zoh · adam"]] == pytest.approx([2**-8, 2**-9, 2**-10, 2**-11], rel=0.15)
