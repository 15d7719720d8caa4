"""Closed-form least squares from sufficient statistics (one or two regressors plus an intercept).

A cell's points are summarised once (n, Σr_j, Σy, Σr_j r_k, Σr_j y, Σy²); fits, their standard
errors and every bootstrap resample are computed from such sums without revisiting the points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEGENERATE_REL = 1e-9
"""Relative determinant below which a design matrix counts as singular (e.g. a 2-D fit on N_u = N_x only)."""


def stat_names(p: int) -> list[str]:
    """Sufficient statistics of an OLS fit with p regressors: n, Σr_j, Σy, Σr_j r_k, Σr_j y, Σy²."""
    pairs = [f"s_{j}{k}" for j in range(p) for k in range(j, p)]
    return ["n", *(f"s_{j}" for j in range(p)), "s_y", *pairs, *(f"s_{j}y" for j in range(p)), "s_yy"]


@dataclass(frozen=True)
class Fit:
    """OLS results over a batch of fits (any leading shape `...`)."""

    coef: np.ndarray  # (..., p) slopes
    intercept: np.ndarray  # (...,)
    se: np.ndarray  # (..., p), NaN where n ≤ p + 1 leaves no residual degree of freedom
    rss: np.ndarray  # (...,) residual sum of squares
    singular: np.ndarray  # (...,) bool: the design does not determine the slopes


def ols(stats: np.ndarray, p: int) -> Fit:
    """Closed-form OLS (p = 1 or 2 regressors plus an intercept) from sufficient statistics (..., S).

    Works on centred cross-products of the sums, so a cell's fit never revisits its points; the
    bootstrap uses the slope part alone (`slopes_only`).
    """
    idx = {name: i for i, name in enumerate(stat_names(p))}
    n = stats[..., idx["n"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = [stats[..., idx[f"s_{j}"]] / n for j in range(p)]
        mean_y = stats[..., idx["s_y"]] / n
        c = {(j, k): stats[..., idx[f"s_{j}{k}"]] - n * mean[j] * mean[k]
             for j in range(p) for k in range(j, p)}
        cy = [stats[..., idx[f"s_{j}y"]] - n * mean[j] * mean_y for j in range(p)]
        cyy = stats[..., idx["s_yy"]] - n * mean_y * mean_y
        if p == 1:
            det = c[0, 0]
            scale = np.abs(c[0, 0])
            coef = [cy[0] / det]
            inv_diag = [1.0 / det]
        else:
            det = c[0, 0] * c[1, 1] - c[0, 1] ** 2
            scale = np.abs(c[0, 0] * c[1, 1])
            coef = [(c[1, 1] * cy[0] - c[0, 1] * cy[1]) / det, (c[0, 0] * cy[1] - c[0, 1] * cy[0]) / det]
            inv_diag = [c[1, 1] / det, c[0, 0] / det]
        singular = ~(det > DEGENERATE_REL * np.maximum(scale, 1e-300)) | ~(n > p)
        rss = np.maximum(cyy - sum(b * v for b, v in zip(coef, cy, strict=True)), 0.0)
        dof = n - p - 1
        sigma2 = np.where(dof > 0, rss / np.where(dof > 0, dof, 1.0), np.nan)
        se = np.stack([np.sqrt(sigma2 * v) for v in inv_diag], axis=-1)
        coef_arr = np.stack(coef, axis=-1)
        intercept = mean_y - sum(b * m for b, m in zip(coef, mean, strict=True))
    coef_arr[singular] = np.nan
    se[singular] = np.nan
    return Fit(coef_arr, np.where(singular, np.nan, intercept), se, rss, singular)


def slopes_only(sums: np.ndarray, p: int) -> list[np.ndarray]:
    """The OLS slopes alone from sufficient statistics (S, ...) ordered as `stat_names(p)`; NaN if singular.

    The bootstrap's hot loop: n-scaled centred cross-products, no SE or intercept (Σy² is not read).
    """
    s = dict(zip(stat_names(p), sums, strict=False))
    n, sy = s["n"], s["s_y"]
    c = {(j, k): n * s[f"s_{j}{k}"] - s[f"s_{j}"] * s[f"s_{k}"] for j in range(p) for k in range(j, p)}
    cy = [n * s[f"s_{j}y"] - s[f"s_{j}"] * sy for j in range(p)]
    with np.errstate(divide="ignore", invalid="ignore"):
        if p == 1:
            ok = c[0, 0] > DEGENERATE_REL * n * s["s_00"]
            return [np.where(ok, cy[0] / c[0, 0], np.nan)]
        det = c[0, 0] * c[1, 1] - c[0, 1] * c[0, 1]
        ok = det > DEGENERATE_REL * np.abs(c[0, 0] * c[1, 1])
        return [np.where(ok, (c[1, 1] * cy[0] - c[0, 1] * cy[1]) / det, np.nan),
                np.where(ok, (c[0, 0] * cy[1] - c[0, 1] * cy[0]) / det, np.nan)]


def stat_columns(r: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Per-point summands of the sufficient statistics, in `stat_names(p)` order."""
    p = r.shape[1]
    cols = [np.ones_like(y), *(r[:, j] for j in range(p)), y]
    cols += [r[:, j] * r[:, k] for j in range(p) for k in range(j, p)]
    cols += [r[:, j] * y for j in range(p)]
    cols.append(y * y)
    return cols
