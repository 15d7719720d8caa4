"""The seed (cluster) bootstrap of a slope: resample seeds with replacement, keep each drawn seed's
points, refit — done on per-seed sufficient statistics, one matrix product per batch of cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssmscope.runs.analysis.slopes import ols
from ssmscope.runs.analysis.stats import interval_quantiles

MIN_SEEDS_FOR_CI = 2
"""A seed bootstrap of one seed has zero spread: fewer seeds give a null CI (the SE is still reported)."""
BOOT_CHUNK = 1 << 22
"""Elements (cells × distinct resamples × sums) per bootstrap batch: bounds memory at ~32 MB."""
RESAMPLE_COPIES = 6
"""Arrays of n_boot × (K + 1) int64/float64 alive at once while resamples() draws and reduces them
(tracemalloc peak over bootstrap_ci / (n_boot · (K+1) · 8 bytes): 4.4 at K = 2, 6.0 at K = 20 to 400)."""


def bootstrap_bytes(n_boot: int, n_seeds: int) -> int:
    """Peak memory of bootstrap_ci for cells of up to `n_seeds` seeds: the resample arrays, which grow with
    n_boot × n_seeds, plus two copies of one batch (BOOT_CHUNK float64 values). The CLI checks it before fitting."""
    return RESAMPLE_COPIES * 8 * n_boot * (n_seeds + 1) + 2 * 8 * BOOT_CHUNK


@dataclass(frozen=True)
class Resamples:
    """n_boot seed resamples of one seed count K, as distinct multiplicity patterns."""

    patterns: np.ndarray  # (U, K) how often each seed position is drawn, one row per distinct pattern
    weights: np.ndarray  # (U,) how many of the n_boot resamples have that pattern
    inverse: np.ndarray  # (B,) the pattern of each resample


def resamples(n_seeds: int, n_boot: int, rng_seed: int) -> Resamples:
    """The n_boot resamples (with replacement) of n_seeds seeds, reduced to distinct patterns.

    Draws depend only on (rng_seed, n_seeds), so a cell's CI does not depend on what else was selected.
    With few seeds the patterns repeat (3 seeds: at most 10 distinct), so each distinct pattern is
    fitted once and weighted by its count: exactly the n_boot-resample percentiles, at a fraction of the cost.
    """
    rng = np.random.default_rng([rng_seed, n_seeds])
    draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # (B, K) drawn seed positions
    flat = (np.arange(n_boot)[:, None] * n_seeds + draws).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_seeds).reshape(n_boot, n_seeds)  # (B, K)
    patterns, inverse, weights = np.unique(counts, axis=0, return_inverse=True, return_counts=True)
    return Resamples(patterns.astype(np.float64), weights.astype(np.float64), inverse.reshape(-1))


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Inverted-CDF quantiles of weighted samples per row: values (m, U), weights (U,) → (m, len(qs)).

    Equal to np.quantile(method="inverted_cdf") of the samples repeated by their weights; NaN samples
    (a resample whose design is singular) carry no weight; a row with no finite sample gives NaN.
    """
    w = np.where(np.isnan(values), 0.0, weights[None, :])  # (m, U)
    order = np.argsort(values, axis=1)  # NaN last
    v_sorted = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(np.take_along_axis(w, order, axis=1), axis=1)  # (m, U)
    total = cw[:, -1:]
    out = np.empty((values.shape[0], len(qs)))
    for i, q in enumerate(qs):
        pos = (cw < q * total - 1e-9 * total).sum(axis=1)  # first index with cumulative weight ≥ q·total
        pos = np.minimum(pos, values.shape[1] - 1)
        out[:, i] = np.take_along_axis(v_sorted, pos[:, None], axis=1)[:, 0]
    out[total[:, 0] <= 0] = np.nan
    return out


def resample_quantiles(values: np.ndarray, res: Resamples, qs: tuple[float, ...]) -> np.ndarray:
    """Inverted-CDF quantiles over the n_boot resamples of per-pattern values (m, U) → (m, len(qs)).

    Few distinct patterns: a weighted sort of U values. Many (U near n_boot, i.e. many seeds): expand
    to the n_boot resamples and select the two order statistics with np.partition, O(n_boot) per row.
    """
    n_boot = len(res.inverse)
    if 8 * len(res.weights) < n_boot:
        return weighted_quantiles(values, res.weights, qs)
    out = np.empty((values.shape[0], len(qs)))
    has_nan = np.isnan(values).any(axis=1)
    if has_nan.any():
        out[has_nan] = weighted_quantiles(values[has_nan], res.weights, qs)
    clean = ~has_nan
    ranks = [max(int(np.ceil(q * n_boot - 1e-9 * n_boot)) - 1, 0) for q in qs]
    expanded = values[clean][:, res.inverse]  # (m', B)
    out[clean] = np.partition(expanded, ranks, axis=1)[:, ranks]
    return out


def bootstrap_ci(seed_stats: np.ndarray, starts: np.ndarray, n_seeds: np.ndarray, p: int, n_boot: int,
                  rng_seed: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Seed-bootstrap percentile CI per cell: (low, high), each (n_cells, p); NaN where not computable.

    seed_stats (rows, S) holds one row of sufficient statistics per (cell, seed), grouped by cell;
    cell c owns rows starts[c] : starts[c] + n_seeds[c]. A resample's sums are its seeds' sums
    weighted by how often each seed was drawn: one matrix product for all resamples of a batch of cells.
    """
    n_cells = len(starts)
    low = np.full((n_cells, p), np.nan)
    high = np.full((n_cells, p), np.nan)
    if n_boot <= 0:
        return low, high
    qs = interval_quantiles(confidence)
    n_sums = seed_stats.shape[1] - 1  # Σy² is not needed for slopes
    by_stat = np.ascontiguousarray(seed_stats[:, :n_sums].T)  # (S', rows)
    for k in np.unique(n_seeds):
        if k < MIN_SEEDS_FOR_CI:
            continue
        cells = np.flatnonzero(n_seeds == k)
        res = resamples(int(k), n_boot, rng_seed)
        chunk = max(1, BOOT_CHUNK // (len(res.weights) * n_sums))
        for lo in range(0, len(cells), chunk):
            part = cells[lo:lo + chunk]
            rows = starts[part][:, None] + np.arange(k)  # (m, K)
            sums = by_stat[:, rows] @ res.patterns.T  # (S', m, K) @ (K, U) → (S', m, U)
            for j, slope in enumerate(ols.slopes_only(sums, p)):
                q = resample_quantiles(slope, res, qs)  # (m, 2)
                low[part, j], high[part, j] = q[:, 0], q[:, 1]
    return low, high
