"""Running exponents (local slopes, sliding windows, top octaves), their trend, and `slopes --fit`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from ssmscope.runs.analysis.running import (
    TREND_COLUMNS,
    WindowKind,
    attach_trend,
    running_slopes,
    top_octave_slopes,
    trend_frame,
    windows,
)
from ssmscope.runs.analysis.slopes import fit_slopes
from ssmscope.runs.analysis.synthetic import synthetic_frame
from ssmscope.runs.cli import slopes as cli_slopes
from ssmscope.runs.cli.main import OneLineErrors
from ssmscope.ssm.errors import ConfigError

WIDTHS = (32, 64, 128, 256, 512, 1024)


def curved(log2_norm, *, noise: float = 0.01, widths=WIDTHS, seeds: int = 3, steps=(4,), **kwargs) -> pl.DataFrame:
    """A synthetic frame (mup-ssm, euler, Adam; x/y value and delta_init at `steps`) whose ‖Δy‖ follows
    log2‖Δy‖ = log2_norm(log2 width) + noise; every other cell is flat (mup-ssm predicts 0 for all four)."""
    frame = synthetic_frame(n_u=widths, presets=("mup-ssm",), discretizations=("euler",), steps=steps,
                            seeds=seeds, noise=noise, **kwargs)
    L = np.log2(frame["n_u"].to_numpy().astype(np.float64))
    dy = ((frame["site"] == "y") & (frame["quantity"] == "delta_init")).to_numpy()
    factor = np.where(dy, np.exp2(2 * np.asarray(log2_norm(L), dtype=np.float64)), 1.0)
    return frame.with_columns(pl.col("sumsq") * pl.Series(factor), pl.col("channel_norm_sum")
                              * pl.Series(np.sqrt(factor)), pl.col("token_norm_sum") * pl.Series(np.sqrt(factor)))


def dy_rows(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter((pl.col("site") == "y") & (pl.col("quantity") == "delta_init"))


def test_windows_are_successive_pairs_triples_and_the_top_two_octaves():
    ws = windows([256, 32, 64, 128, 512])
    assert [w.widths for w in ws if w.kind == WindowKind.PAIR] == [(32, 64), (64, 128), (128, 256), (256, 512)]
    assert [w.widths for w in ws if w.kind == WindowKind.WINDOW3] == [(32, 64, 128), (64, 128, 256), (128, 256, 512)]
    assert [w.widths for w in ws if w.kind == WindowKind.TOP_OCTAVES] == [(128, 256, 512)]
    assert [w.widths for w in windows([64, 512]) if w.kind == WindowKind.TOP_OCTAVES] == []  # 3 octaves apart
    assert windows([64, 128, 512], [WindowKind.TOP_OCTAVES])[0].widths == (128, 512)
    assert math.isclose(windows([32, 128])[0].center, 6.0)


def test_local_slopes_recover_a_curved_power_law():
    """log2‖Δy‖ = 0.3·L + 0.05·(L − 5)²: the slope at L is 0.3 + 0.1·(L − 5); a pair and a symmetric triple
    measure it exactly at their centre."""
    frame = curved(lambda L: 0.3 * L + 0.05 * (L - 5) ** 2)
    fits = dy_rows(running_slopes(frame, layers="mean", step="last", n_boot=200))
    for row in fits.iter_rows(named=True):
        truth = 0.3 + 0.1 * (row["log2_width"] - 5)
        assert row["status"] == "ok"
        assert abs(row["estimate"] - truth) < 0.03, row
        assert abs(row["estimate"] - truth) < 4 * row["se"], row  # the error is the noise's, not a bias
        assert row["ci_low"] < row["estimate"] < row["ci_high"], row
    assert fits.filter(pl.col("window") == "pair").height == 5
    assert fits.filter(pl.col("window") == "window3").height == 4
    top = fits.filter(pl.col("window") == "top-octaves").row(0, named=True)
    assert (top["width_lo"], top["width_hi"]) == (256, 1024) and abs(top["estimate"] - 0.7) < 0.03


def test_a_crossover_curve_settles_at_its_asymptotic_slope():
    """log2‖Δy‖ = log2(1 + (w/64)): slope 0 well below w = 64, 1 well above; local slopes rise monotonically."""
    frame = curved(lambda L: np.log2(1 + np.exp2(L - 6)))
    local = dy_rows(running_slopes(frame, kinds=[WindowKind.PAIR], layers="mean", step="last", n_boot=100))
    est = local.sort("log2_width")["estimate"].to_numpy()
    centers = local.sort("log2_width")["log2_width"].to_numpy()
    truth = [np.log2((1 + 2 ** (c + 0.5 - 6)) / (1 + 2 ** (c - 0.5 - 6))) for c in centers]
    assert np.allclose(est, truth, atol=0.03) and np.all(np.diff(est) > 0)


@pytest.mark.parametrize(("curve", "predicted_slope", "trend"), [
    (lambda L: 0.05 * (L - 5) ** 2, 0.0, "away"),  # slope 0 → 0.5 while the prediction is 0
    (lambda L: -0.05 * (L - 10) ** 2, 0.0, "toward"),  # slope 0.5 → 0: approaching the prediction
    (lambda L: 0.2 * L, 0.0, "settled"),  # a straight line: the slope does not move, whatever its value
    # slope 0 → 0.06: resolved from zero with this little noise, but below the flat tolerance — no verdict moves
    (lambda L: 0.006 * (L - 5) ** 2, 0.0, "settled"),
])
def test_trend_reads_toward_away_or_settled_from_the_running_exponents(curve, predicted_slope, trend):
    frame = curved(curve)
    fits = attach_trend(fit_slopes(frame, layers="mean", step="last", n_boot=200), frame, layers="mean",
                        step="last", n_boot=200)
    row = dy_rows(fits).row(0, named=True)
    assert row["predicted"] == predicted_slope
    assert row["trend"] == trend, row
    flat_cells = fits.filter(~((pl.col("site") == "y") & (pl.col("quantity") == "delta_init")))
    assert set(flat_cells["trend"]) == {"settled"}
    assert set(TREND_COLUMNS) <= set(fits.columns)


def test_trend_without_a_prediction_says_moving_and_with_few_widths_is_null():
    frame = curved(lambda L: 0.05 * (L - 5) ** 2).with_columns(pl.lit("custom.toml").alias("preset"))
    trends = trend_frame(running_slopes(frame, layers="mean", step="last", n_boot=100))
    assert dy_rows(trends)["trend"].to_list() == ["moving"]
    few = curved(lambda L: 0.0, widths=(32, 64))
    assert trend_frame(running_slopes(few, layers="mean", step="last", n_boot=0))["trend"].is_null().all()


def test_trend_compares_non_overlapping_triples_with_five_widths_else_pairs():
    frame = curved(lambda L: 0.05 * (L - 5) ** 2, widths=(32, 64, 128, 256, 512))
    trends = dy_rows(trend_frame(running_slopes(frame, layers="mean", step="last", n_boot=100)))
    # triples (32..128) and (128..512): slopes at L = 6 and 8 → 0.1 and 0.3
    assert trends["local_first"].item() == pytest.approx(0.1, abs=0.03)
    assert trends["local_last"].item() == pytest.approx(0.3, abs=0.03)
    four = dy_rows(trend_frame(running_slopes(curved(lambda L: 0.05 * (L - 5) ** 2, widths=(32, 64, 128, 256)),
                                              layers="mean", step="last", n_boot=100)))
    assert four["local_first"].item() == pytest.approx(0.05, abs=0.03)  # pairs: L = 5.5 and 7.5
    assert four["local_last"].item() == pytest.approx(0.25, abs=0.03)


def test_top_octave_verdicts_judge_only_the_largest_widths():
    """A crossover to slope 1: over 32…1024 the fit averages ~0.8 and disagrees with a predicted 1; over the
    top two octaves it agrees."""
    frame = curved(lambda L: np.log2(1 + np.exp2(L - 5)))
    frame = frame.with_columns(pl.lit("sp").alias("preset"), pl.lit("zoh").alias("discretization"))
    whole = dy_rows(fit_slopes(frame, layers="mean", step="last", n_boot=100)).row(0, named=True)
    top = dy_rows(top_octave_slopes(frame, layers="mean", step="last", n_boot=100)).row(0, named=True)
    assert whole["predicted"] == 1.0 and whole["agreement"] == "disagrees"
    assert (top["width_lo"], top["width_hi"]) == (256, 1024)
    assert top["estimate"] > 0.85 and top["agreement"] == "agrees"


def test_running_fits_keep_diverged_runs_out_and_each_configuration_its_own_widths():
    frame = curved(lambda L: 0.0)
    other = curved(lambda L: 0.0, widths=(64, 128, 256)).with_columns(pl.lit("mup").alias("preset"),
                                                                        pl.col("run_id") + "-mup")
    both = pl.concat([frame, other])
    fits = running_slopes(both, kinds=[WindowKind.PAIR], layers="mean", step="last", n_boot=0)
    pairs = {p: sorted(zip(g["width_lo"], g["width_hi"], strict=True))
             for (p,), g in fits.unique(["preset", "width_lo"]).group_by("preset")}
    assert pairs["mup"] == [(64, 128), (128, 256)] and len(pairs["mup-ssm"]) == 5
    diverged = both.with_columns(pl.when(pl.col("n_u") == 1024).then(pl.lit("diverged")).otherwise("status")
                                 .alias("status"))
    fits = running_slopes(diverged, kinds=[WindowKind.PAIR], layers="mean", step="last", n_boot=0)
    assert fits["width_hi"].max() == 512


def test_running_exponents_need_one_width_axis():
    with pytest.raises(ConfigError, match="one width axis"):
        running_slopes(curved(lambda L: 0.0), design="2d")


# --- the CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def app(monkeypatch):
    from ssmscope.runs.store import db as store

    frame = curved(lambda L: 0.05 * (L - 5) ** 2)
    monkeypatch.setattr(store, "load_probe_frame", lambda db_path, filters=None: frame)
    application = typer.Typer(cls=OneLineErrors)
    application.callback()(lambda: None)
    cli_slopes.register(application)
    return application


def test_cli_fit_running_prints_every_window(app):
    result = CliRunner().invoke(app, ["slopes", "--format", "csv", "--fit", "running", "--table", "full",
                                      "--layers", "mean", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    import io

    rows = dy_rows(pl.read_csv(io.StringIO(result.output)))
    assert sorted(set(rows["window"])) == ["pair", "top-octaves", "window3"]
    assert rows.filter(pl.col("window") == "pair").sort("log2_width")["estimate"].to_list()[0] == pytest.approx(
        0.05, abs=0.03)


def test_cli_slope_table_has_trend_and_judges_top_octaves_on_request(app):
    import io

    full = CliRunner().invoke(app, ["slopes", "--format", "csv", "--table", "full", "--layers", "mean",
                                    "--n-boot", "50"])
    assert full.exit_code == 0, full.output
    assert dy_rows(pl.read_csv(io.StringIO(full.output)))["trend"].to_list() == ["away"]
    top = CliRunner().invoke(app, ["slopes", "--format", "md", "--fit", "top-octaves", "--n-boot", "50"])
    assert top.exit_code == 0, top.output
    assert "| width_lo | width_hi |" in top.output and "| 256 | 1024 |" in top.output
    bad = CliRunner().invoke(app, ["slopes", "--format", "md", "--fit", "sideways"])
    assert bad.exit_code == 2 and "--fit='sideways'" in bad.output


# --- the dashboard page --------------------------------------------------------------------------------
def _store(tmp_path, frame: pl.DataFrame, spec: str) -> Path:
    """A real store holding `frame`'s runs (shards → ingest), as a sweep would leave it."""
    from ssmscope.runs.store.db import ingest
    from ssmscope.runs.store.shards import write_shard

    keys = ("preset", "discretization", "optimizer", "lr", "seed", "n_u", "n_x", "status")
    for (run_id,), rows in frame.group_by("run_id"):
        meta = rows.row(0, named=True)
        run = {k: meta[k] for k in keys}
        write_shard(tmp_path / "shards", {**run, "run_id": run_id, "spec": spec, "finished_at": "t"},
                    rows.drop(*keys, "run_id").to_dicts(), [])
    db = tmp_path / "store.duckdb"
    ingest(db, tmp_path / "shards")
    return db


def _page(db: Path, monkeypatch):
    import json

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SSMSCOPE_DB", str(db))
    main = Path(__file__).resolve().parents[1] / "app" / "main.py"
    at = AppTest.from_file(str(main), default_timeout=120).run()
    at.switch_page("app_pages/running.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at, [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_dashboard_page_plots_local_slopes_with_the_prediction_and_group_contributions(tmp_path, monkeypatch):
    frame = curved(lambda L: 0.05 * (L - 5) ** 2, widths=(32, 64, 128, 256), steps=(0, 4), seeds=2, layers=2,
                   groups=("", "W_B", "W_C"))
    at, figs = _page(_store(tmp_path, frame, "curved"), monkeypatch)
    assert len(figs) == 2, "a running-exponent figure and a group figure"
    local = [t for t in figs[0]["data"] if (t.get("meta") or {}).get("kind") == "local"]
    dy = next(t for t in local if t["meta"]["row"] == "dy")
    assert dy["x"] == pytest.approx([5.5, 6.5, 7.5]) and dy["y"] == pytest.approx([0.05, 0.15, 0.25], abs=0.03)
    assert all(e >= 0 for e in dy["error_y"]["array"])
    preds = {t["meta"]["row"]: t["meta"]["value"] for t in figs[0]["data"]
             if (t.get("meta") or {}).get("kind") == "prediction"}
    assert preds == {"x": 0.0, "y": 0.0, "dx": 0.0, "dy": 0.0}
    trend = pl.from_pandas(at.dataframe[0].value)
    assert trend.filter(pl.col("site") == "y", pl.col("quantity") == "delta_init")["trend"].to_list() == ["away"]
    assert {"regime_ratio", "regime"} <= set(trend.columns)
    groups = {t["meta"]["group"] for t in figs[1]["data"] if (t.get("meta") or {}).get("kind") == "group"}
    assert groups == {"total", "W_B", "W_C"}
    table = pl.from_pandas(at.dataframe[1].value)
    assert {"contribution_ratio", "energy_share"} <= set(table.columns) and set(table["group"]) == {"", "W_B", "W_C"}


def test_dashboard_page_says_how_to_get_group_probes_when_a_sweep_has_none(tmp_path, monkeypatch):
    plain = curved(lambda L: 0.0, widths=(32, 64, 128), steps=(0, 4), seeds=2, layers=1)
    at, figs = _page(_store(tmp_path, plain, "plain"), monkeypatch)
    assert len(figs) == 1 and any("group_probes = true" in i.value for i in at.info)
