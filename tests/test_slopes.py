"""Width-scaling fits: known exponents recovered, CI coverage, 2-D grids, exclusions, verdicts."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ssmscope.runs.analysis.norms import norm_expr, norm_label
from ssmscope.runs.analysis.slopes import (
    AGREE_TOL,
    FIT_COLUMNS,
    FLAT_TOL,
    MIN_WIDTHS,
    attach_predictions,
    fit_slopes,
    paper_slopes,
)
from ssmscope.runs.analysis.synthetic import synthetic_frame
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.predictions import lookup

ONE_CELL = dict(presets=("custom",), discretizations=("zoh",), steps=(10,), layers=1, cells=(("y", "value"),))


def _rms(frame: pl.DataFrame) -> np.ndarray:
    return np.sqrt(frame["sumsq"].to_numpy() / frame["count"].to_numpy())


# --- norms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("convention", "expected"), [
    ("rms", math.sqrt(32.0 / 8)), ("l2", math.sqrt(32.0)), ("token_l2", 12.0 / 4), ("channel_l2", 10.0 / 5)])
def test_norm_expr_derives_each_convention_from_the_raw_sums(convention, expected):
    row = pl.DataFrame({"sumsq": [32.0], "count": [8], "token_norm_sum": [12.0], "n_tokens": [4],
                        "channel_norm_sum": [10.0], "n_channels": [5]})
    assert row.select(norm_expr(convention)).item() == pytest.approx(expected)


def test_norm_label_names_quantity_site_and_convention():
    assert norm_label("rms", "y", "delta_init") == "‖Δy‖ RMS per coordinate"
    assert "per token" in norm_label("token_l2")


def test_unknown_convention_is_a_config_error_listing_the_allowed_ones():
    with pytest.raises(ConfigError, match="allowed: rms, l2, token_l2, channel_l2"):
        norm_expr("l3")


# --- recovery and coverage ------------------------------------------------------------------------
def test_joint_fit_recovers_known_exponents_within_their_errors():
    truth = {("x", "value"): (0.5, 0.25), ("y", "value"): (-0.5, 0.0), ("x", "delta_init"): (0.0, 0.0),
             ("y", "delta_init"): (1.0, 1.0)}
    frame = synthetic_frame(presets=("custom",), seeds=5, noise=0.1, exponents=truth, rng_seed=1)
    slopes = fit_slopes(frame)
    assert slopes.height == 2 * 2 * 3 * 4  # discretizations × steps × layers × cells
    assert (slopes["status"] == "ok").all()
    assert (slopes["n_seeds"] == 5).all() and (slopes["n_widths"] == 5).all()
    expected = slopes.select(pl.struct("site", "quantity").map_elements(
        lambda r: sum(truth[(r["site"], r["quantity"])]), return_dtype=pl.Float64)).to_series()
    error = (slopes["estimate"] - expected).abs()
    assert (error < 5 * slopes["se"]).all()
    assert (error < 0.05).all()
    covered = ((slopes["ci_low"] <= expected) & (expected <= slopes["ci_high"])).mean()
    assert covered >= 0.75  # 48 cells of a 95 % interval with 5 seeds (nominal coverage is tested below)


def test_seed_bootstrap_ci_covers_the_truth_at_about_the_nominal_rate():
    # 200 independent repetitions = 200 cells of one frame; 10 seeds (the percentile bootstrap of
    # k clusters is narrow by about (k-1)/k in variance: docs/slopes.md gives its coverage per k).
    frame = synthetic_frame(**{**ONE_CELL, "presets": tuple(f"rep{i}" for i in range(200))}, seeds=10,
                            noise=0.2, exponents={("y", "value"): (0.5, 0.0)}, rng_seed=7)
    slopes = fit_slopes(frame)
    assert slopes.height == 200
    coverage = ((slopes["ci_low"] <= 0.5) & (0.5 <= slopes["ci_high"])).mean()
    assert 0.85 <= coverage <= 0.99


@pytest.mark.parametrize("seeds", [2, 3])
def test_reported_ci_keeps_its_coverage_with_the_few_seeds_sweeps_use(seeds):
    # the percentile bootstrap alone covers ~50 % (2 seeds) / ~75 % (3 seeds); the union with the OLS
    # interval is what is reported
    frame = synthetic_frame(**{**ONE_CELL, "presets": tuple(f"rep{i}" for i in range(200))}, seeds=seeds,
                            noise=0.2, exponents={("y", "value"): (0.5, 0.0)}, rng_seed=11)
    slopes = fit_slopes(frame)
    coverage = ((slopes["ci_low"] <= 0.5) & (0.5 <= slopes["ci_high"])).mean()
    assert 0.85 <= coverage <= 0.995


def _brute_force_ci(frame: pl.DataFrame, n_boot: int, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Resample seeds with replacement and refit with lstsq, n_boot times (the definition)."""
    seeds = sorted(frame["seed"].unique().to_list())
    k = len(seeds)
    draws = np.random.default_rng([0, k]).integers(0, k, size=(n_boot, k))
    y = np.log2(_rms(frame))
    x = np.column_stack([np.ones(frame.height), *(np.log2(frame[c].to_numpy()) for c in columns)])
    rows_of = [np.flatnonzero(frame["seed"].to_numpy() == s) for s in seeds]
    boot = np.array([np.linalg.lstsq(x[idx], y[idx], rcond=None)[0][1:]
                     for idx in (np.concatenate([rows_of[i] for i in d]) for d in draws)])
    ci = np.quantile(boot, [0.025, 0.975], axis=0, method="inverted_cdf")
    return np.linalg.lstsq(x, y, rcond=None)[0][1:], ci


@pytest.mark.parametrize(("seeds", "n_x", "width", "columns"), [
    (3, None, "joint", ["n_u"]),  # few seeds: repeated resample patterns, weighted quantiles
    (12, None, "joint", ["n_u"]),  # many seeds: nearly every resample distinct, partition path
    (4, (8, 16, 32), "2d", ["n_u", "n_x"]),
])
def test_vectorised_bootstrap_equals_resampling_seeds_and_refitting(seeds, n_x, width, columns):
    frame = synthetic_frame(**ONE_CELL, seeds=seeds, n_x=n_x, noise=0.3,
                            exponents={("y", "value"): (0.5, -0.3)})
    slopes = fit_slopes(frame, design=width, n_boot=400, interval="bootstrap")
    estimate, ci = _brute_force_ci(frame, 400, columns)
    np.testing.assert_allclose(slopes["estimate"].to_numpy(), estimate, rtol=1e-10)
    np.testing.assert_allclose(slopes["ci_low"].to_numpy(), ci[0], rtol=1e-10)
    np.testing.assert_allclose(slopes["ci_high"].to_numpy(), ci[1], rtol=1e-10)


def test_two_d_grid_recovers_su_and_sx_separately():
    frame = synthetic_frame(**ONE_CELL, n_u=(64, 128, 256, 512), n_x=(8, 16, 32, 64), seeds=3, noise=0.05,
                            exponents={("y", "value"): (-1.0, 1.5)})
    slopes = fit_slopes(frame, design="2d")
    assert slopes["term"].to_list() == ["n_u", "n_x"]
    s_u, s_x = slopes["estimate"].to_list()
    assert s_u == pytest.approx(-1.0, abs=0.03) and s_x == pytest.approx(1.5, abs=0.03)
    assert (slopes["ci_low"] <= slopes["estimate"]).all() and (slopes["estimate"] <= slopes["ci_high"]).all()
    assert slopes["n_points"].to_list() == [48, 48] and slopes["n_widths"].to_list() == [4, 4]


def test_two_d_fit_on_a_diagonal_grid_is_singular_not_a_number():
    frame = synthetic_frame(**ONE_CELL, seeds=2)  # N_u = N_x everywhere: s_u and s_x are not identified
    slopes = fit_slopes(frame, design="2d")
    assert slopes["status"].to_list() == ["singular", "singular"]
    assert slopes["estimate"].is_null().all() and (slopes["agreement"] == "not fitted").all()


@pytest.mark.parametrize(("width", "fixed", "truth"), [("n_u", "n_x", -1.0), ("n_x", "n_u", 1.5)])
def test_one_axis_designs_fit_once_per_value_of_the_fixed_width(width, fixed, truth):
    frame = synthetic_frame(**ONE_CELL, n_u=(32, 64, 128), n_x=(8, 16, 32, 64), seeds=2, noise=0.01,
                            exponents={("y", "value"): (-1.0, 1.5)})
    slopes = fit_slopes(frame, design=width)
    assert sorted(slopes["fixed_width"].to_list()) == sorted(frame[fixed].unique().to_list())
    assert (slopes["term"] == width).all()
    np.testing.assert_allclose(slopes["estimate"].to_numpy(), truth, atol=0.05)


# --- too few points, exclusions ----------------------------------------------------------------------
def test_too_few_widths_are_reported_with_a_status_not_dropped():
    frame = synthetic_frame(**ONE_CELL, n_u=(32, 64)[: MIN_WIDTHS - 1], seeds=3)
    slopes = fit_slopes(frame)
    assert slopes.height == 1
    row = slopes.row(0, named=True)
    assert row["status"] == "too_few_points" and row["n_points"] == 6 and row["n_widths"] == MIN_WIDTHS - 1
    assert row["estimate"] is None and row["verdict"] is None and row["agreement"] == "not fitted"


def _set_status(frame: pl.DataFrame, status: str, n_u: int, seeds: tuple[int, ...],
                poison: bool) -> pl.DataFrame:
    hit = (pl.col("n_u") == n_u) & pl.col("seed").is_in(seeds)
    frame = frame.with_columns(pl.when(hit).then(pl.lit(status)).otherwise(pl.col("status")).alias("status"))
    if poison:  # what a diverged run leaves behind
        frame = frame.with_columns(pl.when(hit).then(float("inf")).otherwise(pl.col("sumsq")).alias("sumsq"))
    return frame


def test_diverged_and_failed_runs_are_excluded_by_default_and_counted():
    frame = synthetic_frame(**ONE_CELL, seeds=3, exponents={("y", "value"): (0.5, 0.0)}, noise=0.0)
    frame = _set_status(frame, "diverged", 512, (0, 1), poison=True)
    frame = _set_status(frame, "failed", 256, (2,), poison=False)
    row = fit_slopes(frame).row(0, named=True)
    assert (row["n_diverged"], row["n_failed"], row["n_points"], row["n_nonfinite"]) == (2, 1, 12, 0)
    assert row["estimate"] == pytest.approx(0.5)
    included = fit_slopes(frame, include_failed=True).row(0, named=True)
    assert (included["n_diverged"], included["n_points"], included["n_nonfinite"]) == (2, 13, 2)


def test_a_configuration_whose_runs_all_diverged_is_reported_at_the_last_step():
    frame = synthetic_frame(**{**ONE_CELL, "steps": (0, 5)}).with_columns(status=pl.lit("diverged"))
    row = fit_slopes(frame, step="last").row(0, named=True)
    assert (row["step"], row["status"], row["n_points"], row["n_diverged"]) == (5, "too_few_points", 0, 15)


def test_zero_and_non_finite_norms_are_excluded_and_counted():
    frame = synthetic_frame(**ONE_CELL, seeds=2, exponents={("y", "value"): (0.5, 0.0)}, noise=0.0)
    bad = {0: 0.0, 1: float("nan")}
    frame = frame.with_columns(
        pl.when((pl.col("n_u") == 32) & pl.col("seed").is_in(list(bad)))
        .then(pl.col("seed").replace_strict(bad, return_dtype=pl.Float64))
        .otherwise(pl.col("sumsq")).alias("sumsq"))
    row = fit_slopes(frame).row(0, named=True)
    assert (row["n_points"], row["n_nonfinite"], row["n_widths"]) == (8, 2, 4)
    assert row["estimate"] == pytest.approx(0.5)


def test_one_seed_gives_an_ols_se_but_no_bootstrap_ci():
    row = fit_slopes(synthetic_frame(**ONE_CELL, seeds=1), interval="bootstrap").row(0, named=True)
    assert row["status"] == "ok" and row["se"] > 0
    assert row["ci_low"] is None and row["ci_high"] is None
    union = fit_slopes(synthetic_frame(**ONE_CELL, seeds=1)).row(0, named=True)  # the OLS interval alone
    assert union["ci_low"] == pytest.approx(union["estimate"] - 1.959964 * union["se"], rel=1e-6)


# --- steps, layers, determinism ---------------------------------------------------------------------
def test_layer_mean_fits_the_mean_of_the_per_layer_slopes():
    frame = synthetic_frame(presets=("custom",), discretizations=("zoh",), steps=(5,), layers=3,
                            cells=(("x", "value"),), seeds=3, noise=0.2)
    each = fit_slopes(frame)
    mean = fit_slopes(frame, layers="mean")
    assert mean.height == 1 and mean["layer"].is_null().all() and mean["n_points"].item() == 15
    assert mean["estimate"].item() == pytest.approx(each["estimate"].mean(), rel=1e-10)


def test_step_last_takes_each_configurations_last_step():
    early = synthetic_frame(**{**ONE_CELL, "presets": ("a",), "steps": (0, 10)})
    late = synthetic_frame(**{**ONE_CELL, "presets": ("b",), "steps": (0, 10, 20)})
    slopes = fit_slopes(pl.concat([early, late]), step="last")
    assert dict(zip(slopes["preset"], slopes["step"], strict=True)) == {"a": 10, "b": 20}
    assert fit_slopes(pl.concat([early, late]), step=10).height == 2


def test_fits_are_deterministic_and_the_bootstrap_seed_only_moves_the_ci():
    frame = synthetic_frame(**ONE_CELL, seeds=8, noise=0.2)
    first, again = fit_slopes(frame, interval="bootstrap"), fit_slopes(frame, interval="bootstrap")
    other = fit_slopes(frame, rng_seed=1, interval="bootstrap")
    assert first.equals(again)
    assert first["estimate"].item() == other["estimate"].item()
    assert first["ci_low"].item() != other["ci_low"].item()


def test_output_has_every_documented_column_and_one_row_per_cell_and_term():
    frame = synthetic_frame(seeds=2, groups=("", "W_B"))
    slopes = fit_slopes(frame)
    assert slopes.columns == FIT_COLUMNS
    assert slopes.height == 3 * 2 * 2 * 3 * 4 * 2  # presets, discs, steps, layers, cells, groups
    assert slopes.filter(pl.col("group") == "W_B")["agreement"].unique().to_list() == ["no prediction"]


def test_optional_run_keys_separate_configurations():
    a = synthetic_frame(**ONE_CELL).with_columns(pl.lit(0.1).alias("dt_max"))
    b = synthetic_frame(**ONE_CELL).with_columns(pl.lit(1.0).alias("dt_max"), pl.col("run_id") + "-dt1")
    slopes = fit_slopes(pl.concat([a, b]))
    assert slopes["dt_max"].to_list() == [0.1, 1.0] and (slopes["n_seeds"] == 3).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(design="3d"), "width='3d'"), (dict(layers="some"), "layers='some'"), (dict(step="first"), "step="),
    (dict(convention="l1"), "convention='l1'"), (dict(confidence=1.5), "confidence")])
def test_bad_arguments_are_config_errors_naming_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fit_slopes(synthetic_frame(**ONE_CELL), **kwargs)


def test_a_frame_without_the_probe_columns_is_a_config_error():
    with pytest.raises(ConfigError, match="lacks column"):
        fit_slopes(pl.DataFrame({"preset": ["sp"]}))


# --- predicted vs measured ---------------------------------------------------------------------------
def _slope_rows(rows: list[dict]) -> pl.DataFrame:
    base = dict(preset="sp", discretization="euler", optimizer="adam", group="", site="y", quantity="value",
                convention="rms", term="width", status="ok", ci_low=None, ci_high=None)
    schema = {"estimate": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64}
    return pl.DataFrame([{**base, **r} for r in rows], schema_overrides=schema)


def test_verdict_reads_flat_grows_vanishes_at_the_thresholds():
    frame = _slope_rows([{"estimate": v} for v in (FLAT_TOL, FLAT_TOL + 0.01, -FLAT_TOL - 0.01, 0.0)])
    assert attach_predictions(frame)["verdict"].to_list() == ["flat", "grows", "vanishes", "flat"]


def test_agreement_by_tolerance_by_ci_or_not_at_all():
    predicted = lookup("sp", "euler", "adam", "y", "value")
    assert predicted is not None
    p = predicted.n_u + predicted.n_x  # joint width
    frame = _slope_rows([
        {"estimate": p + AGREE_TOL - 0.01},  # within the tolerance
        {"estimate": p + 0.5, "ci_low": p - 0.1, "ci_high": p + 0.9},  # far, but the CI covers it
        {"estimate": p + 0.5, "ci_low": p + 0.2, "ci_high": p + 0.9},  # far, CI misses
        {"estimate": p, "preset": "custom"},  # no prediction for a custom preset
        {"estimate": p, "optimizer": "adamw"},  # adamw uses the adam family
        {"estimate": p, "optimizer": "lion"},  # unknown family: no prediction
        {"estimate": p, "group": "W_B"},  # predictions describe totals
        {"estimate": None, "status": "too_few_points"},
    ])
    out = attach_predictions(frame)
    assert out["agreement"].to_list() == ["agrees", "agrees", "disagrees", "no prediction", "agrees",
                                          "no prediction", "no prediction", "not fitted"]
    assert out["predicted"][0] == p


@pytest.mark.parametrize(("width", "terms"), [
    ("joint", {"width": (1, 1)}), ("2d", {"n_u": (1, 0), "n_x": (0, 1)})])
def test_predicted_slope_per_term_in_the_fit_convention(width, terms):
    frame = synthetic_frame(presets=("mup",), discretizations=("euler",), steps=(1,), layers=1,
                            cells=(("x", "value"),), n_x=None if width == "joint" else (16, 32, 64))
    for convention, shift in (("rms", 0.0), ("l2", 0.5)):  # x counts N_u·N_x elements per token
        slopes = fit_slopes(frame, design=width, convention=convention, n_boot=0)
        rms = lookup("mup", "euler", "adam", "x", "value")
        assert rms is not None
        for row in slopes.iter_rows(named=True):
            a, b = terms[row["term"]]
            assert row["predicted"] == pytest.approx(a * (rms.n_u + shift) + b * (rms.n_x + shift))


def test_paper_slopes_label_the_four_columns_and_use_the_last_step():
    frame = synthetic_frame(steps=(0, 3), cells=(("x", "value"), ("y", "value"), ("x", "delta_init"),
                                                 ("y", "delta_init"), ("cx", "value")))
    paper = paper_slopes(frame, n_boot=50)
    assert set(paper["column"]) == {"x", "y", "dx", "dy"}
    assert (paper["step"] == 3).all() and paper["layer"].is_null().all()
    assert paper.height == 3 * 2 * 4
