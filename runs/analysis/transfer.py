"""Learning-rate transfer: the optimal learning rate per width, and how it drifts with width.

Input: one row per run with its final loss (`final_losses`). Per (preset, discretisation,
optimizer, width) and seed the optimum is the vertex of a parabola in log2(lr) through the
grid minimum and its two neighbours; a minimum at the edge of the grid is reported as such
(the vertex is not extrapolated), and a width whose runs all diverged has no optimum.
Uncertainty comes from a seed bootstrap. The drift is the slope of log2 η* against log2
width across widths (with a bootstrap CI); µP-style transfer means a drift near 0.
Pure polars/numpy: no store access here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT, interval_quantiles, normal_z
from ssmscope.runs.analysis.vocabulary import TransferStatus
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS, RunStatus

GROUP_KEYS = PARAMETERIZATION_KEYS
EDGE_STATUSES = (TransferStatus.EDGE_LOW, TransferStatus.EDGE_HIGH)
"""A width whose best learning rate is at an end of the grid: its optimum may lie outside."""
"""What one learning-rate curve (and one drift) belongs to; `init_base` joins them where it varies."""


def group_keys(frame: pl.DataFrame) -> list[str]:
    """GROUP_KEYS, plus init_base when `frame` holds runs of more than one init base (a preset on two
    bases is two parameterizations: their optima are never pooled)."""
    keys = list(GROUP_KEYS)
    if "init_base" in frame.columns and frame["init_base"].n_unique() > 1:
        keys.insert(1, "init_base")
    return keys


_PERCENTILES = [100 * q for q in interval_quantiles()]


@dataclass(frozen=True)
class Optimum:
    log2_lr: float  # log2 η*; NaN when none
    loss: float  # loss at the optimum (parabola vertex value, or the grid minimum)
    status: TransferStatus


def parabola_optimum(log2_lr: np.ndarray, loss: np.ndarray) -> Optimum:
    """Optimum of one loss-vs-log2(lr) curve; non-finite losses are diverged points."""
    order = np.argsort(log2_lr)
    x, y = np.asarray(log2_lr, float)[order], np.asarray(loss, float)[order]
    finite = np.isfinite(y)
    if not finite.any():
        return Optimum(math.nan, math.nan, TransferStatus.ALL_DIVERGED)
    if len(x) == 1:
        return Optimum(float(x[0]), float(y[0]), TransferStatus.SINGLE_POINT)
    i = int(np.argmin(np.where(finite, y, np.inf)))
    if i == 0:
        return Optimum(float(x[0]), float(y[0]), TransferStatus.EDGE_LOW)
    if i == len(x) - 1:
        return Optimum(float(x[i]), float(y[i]), TransferStatus.EDGE_HIGH)
    x3, y3 = x[i - 1 : i + 2], y[i - 1 : i + 2]
    if not np.all(np.isfinite(y3)):  # the next learning rate diverged: keep the grid point
        return Optimum(float(x[i]), float(y[i]), TransferStatus.INTERIOR)
    a, b, c = np.polyfit(x3, y3, 2)
    if a <= 0:  # a flat triple: keep the grid point
        return Optimum(float(x[i]), float(y[i]), TransferStatus.INTERIOR)
    xv = float(np.clip(-b / (2 * a), x3[0], x3[-1]))
    return Optimum(xv, float(a * xv**2 + b * xv + c), TransferStatus.INTERIOR)


def final_losses(losses: pl.DataFrame, use: str = "eval_loss") -> pl.DataFrame:
    """One row per run: the loss at its last logged step (diverged runs → +inf).

    `losses` has the columns of runs.store.db.load_losses (run_id, step, train_loss, eval_loss,
    preset, discretization, optimizer, lr, seed, n_u, n_x, status).
    """
    if use not in ("eval_loss", "train_loss"):
        raise ValueError(f"use={use!r}; allowed: eval_loss, train_loss")
    have = losses.filter(pl.col(use).is_not_null())
    last = have.sort("step").group_by("run_id").agg(pl.all().last())
    return last.with_columns(
        pl.when(pl.col("status") == RunStatus.DIVERGED).then(float("inf")).otherwise(pl.col(use)).alias("loss")
    ).select("run_id", *group_keys(losses), "lr", "seed", "n_u", "n_x", "status", "loss")


def _width_column(frame: pl.DataFrame) -> str:
    return "n_u" if frame["n_u"].n_unique() > 1 else "n_x"


def optima(final: pl.DataFrame, n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0) -> pl.DataFrame:
    """Per (preset, discretisation, optimizer, width): η* of the seed-mean curve with a bootstrap CI."""
    width = _width_column(final)
    keys = group_keys(final)
    rng = np.random.default_rng(rng_seed)
    rows = []
    for key, sub in final.group_by([*keys, width], maintain_order=True):
        lrs = np.sort(sub["lr"].unique().to_numpy())
        seeds = np.sort(sub["seed"].unique().to_numpy())
        grid = np.full((len(seeds), len(lrs)), np.nan)
        for r in sub.iter_rows(named=True):
            grid[np.searchsorted(seeds, r["seed"]), np.searchsorted(lrs, r["lr"])] = r["loss"]
        x = np.log2(lrs)
        best = parabola_optimum(x, _mean_curve(grid))
        boot = []
        if best.status != TransferStatus.ALL_DIVERGED and len(seeds) > 1:
            for _ in range(n_boot):
                pick = rng.integers(0, len(seeds), len(seeds))
                o = parabola_optimum(x, _mean_curve(grid[pick]))
                if math.isfinite(o.log2_lr):
                    boot.append(o.log2_lr)
        lo, hi = (np.percentile(boot, _PERCENTILES) if boot else (math.nan, math.nan))
        rows.append({**dict(zip([*keys, "width"], key, strict=True)),
                     "log2_lr_opt": best.log2_lr, "lr_opt": 2**best.log2_lr if math.isfinite(best.log2_lr)
                     else math.nan, "ci_low": float(lo), "ci_high": float(hi), "loss_at_opt": best.loss,
                     "status": best.status, "n_seeds": len(seeds), "n_lrs": len(lrs),
                     "n_diverged": int(np.sum(~np.isfinite(grid)))})
    return pl.DataFrame(rows).sort([*keys, "width"])


def _mean_curve(grid: np.ndarray) -> np.ndarray:
    """Mean over seeds; a learning rate where any seed diverged counts as diverged."""
    ok = np.all(np.isfinite(grid), axis=0)
    return np.where(ok, np.where(np.isfinite(grid), grid, 0.0).sum(axis=0) / len(grid), np.inf)


def drift(opt: pl.DataFrame, final: pl.DataFrame | None = None, n_boot: int = DEFAULT_N_BOOT,
          rng_seed: int = 0) -> pl.DataFrame:
    """Slope of log2 η* vs log2 width per (preset, discretisation, optimizer), with a CI.

    Only interior optima enter the fit (edge and diverged widths are counted, not used).
    The CI resamples seeds within every width (needs `final`); without it, it is the OLS one.
    `reason` says why a drift or its CI is missing (null when both are there).
    """
    rows = []
    keys = group_keys(opt)
    for key, sub in opt.group_by(keys, maintain_order=True):
        ok = sub.filter(pl.col("status") == TransferStatus.INTERIOR)
        xs, ys = np.log2(ok["width"].to_numpy().astype(float)), ok["log2_lr_opt"].to_numpy()
        slope = lo = hi = math.nan
        if len(xs) >= 2:
            slope = float(np.polyfit(xs, ys, 1)[0])
        if len(xs) >= 3:
            if final is not None:
                lo, hi = _drift_bootstrap(final, dict(zip(keys, key, strict=True)),
                                          ok["width"].to_list(), n_boot, rng_seed)
            else:
                resid = ys - np.polyval(np.polyfit(xs, ys, 1), xs)
                se = math.sqrt(resid @ resid / (len(xs) - 2) / np.sum((xs - xs.mean()) ** 2))
                lo, hi = slope - normal_z() * se, slope + normal_z() * se
        loss = sub["loss_at_opt"].to_numpy()
        rows.append({**dict(zip(keys, key, strict=True)), "drift": slope, "ci_low": lo, "ci_high": hi,
                     "reason": _missing_reason(len(xs), slope, lo),
                     "n_widths": len(sub), "n_interior": len(ok),
                     "widths_at_edge": int(sub["status"].is_in(EDGE_STATUSES).sum()),
                     "widths_all_diverged": int((sub["status"] == TransferStatus.ALL_DIVERGED).sum()),
                     "loss_smallest": float(loss[0]), "loss_largest": float(loss[-1])})
    return pl.DataFrame(rows)


def _missing_reason(n_interior: int, slope: float, ci_low: float) -> str | None:
    """Why the drift or its CI could not be computed, in words (None when both were)."""
    if n_interior < 2:
        return (f"no drift: {n_interior} width(s) with an interior optimum; a drift needs 2, "
                "its CI 3 (widen the learning-rate grid)")
    if n_interior < 3:
        return "no CI: 2 widths with an interior optimum; a CI needs 3 (the drift is the line through 2 points)"
    if math.isnan(ci_low) and math.isfinite(slope):
        return "no CI: no bootstrap resample had an interior optimum at every width"
    return None


def _drift_bootstrap(final: pl.DataFrame, key: dict, widths: list[int], n_boot: int,
                     rng_seed: int) -> tuple[float, float]:
    width = _width_column(final)
    sub = final.filter(*(pl.col(k) == v for k, v in key.items()))
    rng = np.random.default_rng(rng_seed)
    curves = {}
    for w in widths:
        ws = sub.filter(pl.col(width) == w)
        lrs = np.sort(ws["lr"].unique().to_numpy())
        seeds = np.sort(ws["seed"].unique().to_numpy())
        grid = np.full((len(seeds), len(lrs)), np.nan)
        for r in ws.iter_rows(named=True):
            grid[np.searchsorted(seeds, r["seed"]), np.searchsorted(lrs, r["lr"])] = r["loss"]
        curves[w] = (np.log2(lrs), grid)
    slopes = []
    lx = np.log2(np.array(widths, float))
    for _ in range(n_boot):
        ys = []
        for w in widths:
            x, grid = curves[w]
            ys.append(parabola_optimum(x, _mean_curve(grid[rng.integers(0, len(grid), len(grid))])).log2_lr)
        ys = np.array(ys)
        if np.all(np.isfinite(ys)):
            slopes.append(np.polyfit(lx, ys, 1)[0])
    if not slopes:
        return math.nan, math.nan
    lo, hi = np.percentile(slopes, _PERCENTILES)
    return float(lo), float(hi)
