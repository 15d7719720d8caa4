"""Learning-rate transfer: the optimal learning rate per width, and how it drifts with width.

Input: one row per run with its final loss (`final_losses`). Per (preset, discretisation,
optimizer, width) and seed the optimum is the vertex of a parabola in log2(lr) through the
grid minimum and its two neighbours; a minimum at the edge of the grid is reported as such
(the vertex is not extrapolated), and a width whose runs all diverged has no optimum.
Uncertainty comes from a seed bootstrap. The drift is the slope of log2 η* against log2
width across widths (with a bootstrap CI); µP-style transfer means a drift near 0. "Wider is
better" is the slope of the loss at the optimum against log2 width (with the same bootstrap):
negative means wider models reach a lower loss at their own best learning rate, the µP
literature's correctness criterion. With one seed per width no interval is given, and the reason
says so (a bootstrap of one seed resamples the same seed: a zero-width interval that means nothing).
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
    """GROUP_KEYS, with init_base after the preset and readout at the end when `frame` holds runs of more than one
    (a preset on two bases, or with its readout tied and untied, is two parameterizations: their optima are never
    pooled)."""

    def varies(key: str) -> list[str]:
        return [key] if key in frame.columns and frame[key].n_unique() > 1 else []

    preset, *rest = GROUP_KEYS
    return [preset, *varies("init_base"), *rest, *varies("readout")]


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
        boot, boot_loss = [], []
        if best.status != TransferStatus.ALL_DIVERGED and len(seeds) > 1:
            for _ in range(n_boot):
                pick = rng.integers(0, len(seeds), len(seeds))
                o = parabola_optimum(x, _mean_curve(grid[pick]))
                if math.isfinite(o.log2_lr):
                    boot.append(o.log2_lr)
                    boot_loss.append(o.loss)
        lo, hi = (np.percentile(boot, _PERCENTILES) if boot else (math.nan, math.nan))
        loss_lo, loss_hi = (np.percentile(boot_loss, _PERCENTILES) if boot_loss else (math.nan, math.nan))
        rows.append({**dict(zip([*keys, "width"], key, strict=True)),
                     "log2_lr_opt": best.log2_lr, "lr_opt": 2**best.log2_lr if math.isfinite(best.log2_lr)
                     else math.nan, "ci_low": float(lo), "ci_high": float(hi), "loss_at_opt": best.loss,
                     "loss_ci_low": float(loss_lo), "loss_ci_high": float(loss_hi),
                     "loss_seed_sd": _seed_spread(x, grid, best),
                     "status": best.status, "n_seeds": len(seeds), "n_lrs": len(lrs),
                     "n_diverged": int(np.sum(~np.isfinite(grid)))})
    return pl.DataFrame(rows).sort([*keys, "width"])


def _seed_spread(x: np.ndarray, grid: np.ndarray, best: Optimum) -> float:
    """Standard deviation over seeds of each seed's loss at the grid learning rate nearest η* (NaN with one seed
    or no optimum): how much the loss at the optimum moves from seed to seed."""
    if len(grid) < 2 or not math.isfinite(best.log2_lr):
        return math.nan
    column = grid[:, int(np.argmin(np.abs(x - best.log2_lr)))]
    return float(np.std(column, ddof=1)) if np.all(np.isfinite(column)) else math.nan


def _mean_curve(grid: np.ndarray) -> np.ndarray:
    """Mean over seeds; a learning rate where any seed diverged counts as diverged."""
    ok = np.all(np.isfinite(grid), axis=0)
    return np.where(ok, np.where(np.isfinite(grid), grid, 0.0).sum(axis=0) / len(grid), np.inf)


def drift(opt: pl.DataFrame, final: pl.DataFrame | None = None, n_boot: int = DEFAULT_N_BOOT,
          rng_seed: int = 0) -> pl.DataFrame:
    """Per (preset, discretisation, optimizer): the drift of the optimal learning rate and the slope of the loss
    at the optimum, both against log2 width, with CIs.

    drift: the slope of log2 η* over widths with an interior optimum (edge and diverged widths are counted, not
    used). loss_slope ("wider is better" when negative): the slope of the loss at the optimum over every width
    that has one (an edge optimum's loss is the best grid point's: an upper bound of the true optimum's). The CIs
    resample seeds within every width (needs `final` and ≥ 2 seeds per width); without `final` the drift's CI is
    the OLS one. `reason` / `loss_reason` say why a number or its CI is missing (null when both are there).
    """
    rows = []
    keys = group_keys(opt)
    for key, sub in opt.group_by(keys, maintain_order=True):
        ok = sub.filter(pl.col("status") == TransferStatus.INTERIOR)
        xs, ys = np.log2(ok["width"].to_numpy().astype(float)), ok["log2_lr_opt"].to_numpy()
        has_loss = sub.filter(pl.col("loss_at_opt").is_finite())
        lx, ly = np.log2(has_loss["width"].to_numpy().astype(float)), has_loss["loss_at_opt"].to_numpy()
        slope = lo = hi = loss_slope = loss_lo = loss_hi = math.nan
        if len(xs) >= 2:
            slope = float(np.polyfit(xs, ys, 1)[0])
        if len(lx) >= 2:
            loss_slope = float(np.polyfit(lx, ly, 1)[0])
        one_seed = "n_seeds" in sub.columns and int(sub["n_seeds"].min()) < 2
        if final is not None and not one_seed and (len(xs) >= 3 or len(lx) >= 3):
            boot = _seed_bootstrap(final, dict(zip(keys, key, strict=True)), sub["width"].to_list(),
                                   ok["width"].to_list(), n_boot, rng_seed)
            if len(xs) >= 3:
                lo, hi = boot[0]
            if len(lx) >= 3:
                loss_lo, loss_hi = boot[1]
        elif final is None and len(xs) >= 3:
            resid = ys - np.polyval(np.polyfit(xs, ys, 1), xs)
            se = math.sqrt(resid @ resid / (len(xs) - 2) / np.sum((xs - xs.mean()) ** 2))
            lo, hi = slope - normal_z() * se, slope + normal_z() * se
        loss = sub["loss_at_opt"].to_numpy()
        rows.append({**dict(zip(keys, key, strict=True)), "drift": slope, "ci_low": lo, "ci_high": hi,
                     "reason": _missing_reason(len(xs), slope, lo, one_seed and final is not None),
                     "loss_slope": loss_slope, "loss_ci_low": loss_lo, "loss_ci_high": loss_hi,
                     "loss_reason": _loss_reason(len(lx), loss_slope, loss_lo, one_seed, final is not None),
                     "n_widths": len(sub), "n_interior": len(ok),
                     "widths_at_edge": int(sub["status"].is_in(EDGE_STATUSES).sum()),
                     "widths_all_diverged": int((sub["status"] == TransferStatus.ALL_DIVERGED).sum()),
                     "loss_smallest": float(loss[0]), "loss_largest": float(loss[-1])})
    return pl.DataFrame(rows)


ONE_SEED = "no CI: one seed per width (a seed bootstrap needs 2 or more; rerun with more seeds)"
"""Why a transfer number has no interval when a width has a single seed."""


def _loss_reason(n_widths: int, slope: float, ci_low: float, one_seed: bool, bootstrapped: bool) -> str | None:
    """Why the loss-at-optimum slope or its CI is missing, in words (None when both are there)."""
    if n_widths < 2:
        return f"no slope: {n_widths} width(s) with a loss at the optimum; a slope needs 2, its CI 3"
    if one_seed:
        return ONE_SEED
    if not bootstrapped:
        return "no CI: the seed bootstrap needs the runs' losses"
    if n_widths < 3:
        return "no CI: 2 widths; a CI needs 3 (the slope is the line through 2 points)"
    if math.isnan(ci_low) and math.isfinite(slope):
        return "no CI: no bootstrap resample had a loss at the optimum at every width"
    return None


def _missing_reason(n_interior: int, slope: float, ci_low: float, one_seed: bool = False) -> str | None:
    """Why the drift or its CI could not be computed, in words (None when both were)."""
    if n_interior < 2:
        return (f"no drift: {n_interior} width(s) with an interior optimum; a drift needs 2, "
                "its CI 3 (widen the learning-rate grid)")
    if one_seed and n_interior >= 3:
        return ONE_SEED
    if n_interior < 3:
        return "no CI: 2 widths with an interior optimum; a CI needs 3 (the drift is the line through 2 points)"
    if math.isnan(ci_low) and math.isfinite(slope):
        return "no CI: no bootstrap resample had an interior optimum at every width"
    return None


def _seed_bootstrap(final: pl.DataFrame, key: dict, widths: list[int], interior: list[int], n_boot: int,
                    rng_seed: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """CIs of (drift over the `interior` widths, loss-at-optimum slope over all `widths`) from one seed bootstrap:
    each resample draws seeds with replacement within every width and refits both slopes."""
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
    drifts, loss_slopes = [], []
    lx_drift = np.log2(np.array(interior, float))
    lx_loss = np.log2(np.array(widths, float))
    for _ in range(n_boot):
        found = {}
        for w in widths:
            x, grid = curves[w]
            found[w] = parabola_optimum(x, _mean_curve(grid[rng.integers(0, len(grid), len(grid))]))
        ys = np.array([found[w].log2_lr for w in interior])
        if len(interior) >= 3 and np.all(np.isfinite(ys)):
            drifts.append(np.polyfit(lx_drift, ys, 1)[0])
        losses = np.array([found[w].loss for w in widths])
        if np.all(np.isfinite(losses)):
            loss_slopes.append(np.polyfit(lx_loss, losses, 1)[0])

    def interval(values: list[float]) -> tuple[float, float]:
        if not values:
            return math.nan, math.nan
        lo, hi = np.percentile(values, _PERCENTILES)
        return float(lo), float(hi)

    return interval(drifts), interval(loss_slopes)


def eta_table(opt: pl.DataFrame, presets: list[str] | None = None) -> pl.DataFrame:
    """The optimal learning rate per width, one column per parameterization (Megatron-LM's transfer table): each
    cell η* as a number, with ^ (or v) when the best grid point was the largest (smallest) learning rate, so the
    optimum may lie beyond the grid, and "—" where every run diverged. Columns follow `presets` (a display order;
    default: as the optima are sorted)."""
    keys = group_keys(opt)
    label = pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator=" · ")
    marks = {TransferStatus.EDGE_HIGH: " ^", TransferStatus.EDGE_LOW: " v"}
    cells = opt.with_columns(label.alias("parameterization")).with_columns(
        pl.struct("lr_opt", "status").map_elements(
            lambda r: "—" if not math.isfinite(r["lr_opt"]) else f"{r['lr_opt']:.3g}{marks.get(r['status'], '')}",
            return_dtype=pl.String).alias("eta"))
    rank = {p: i for i, p in enumerate(presets or [])}
    firsts = cells.select("preset", "parameterization").unique(maintain_order=True).rows()
    order = [label for _, label in sorted(firsts, key=lambda r: rank.get(r[0], len(rank)))]
    return (cells.pivot(on="parameterization", index="width", values="eta", aggregate_function="first")
            .sort("width").select("width", *order))
