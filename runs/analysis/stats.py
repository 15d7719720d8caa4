"""Statistics constants every analysis shares (slopes, LR transfer, the dashboard, the CLI defaults)."""

from __future__ import annotations

from statistics import NormalDist

DEFAULT_N_BOOT = 1000
"""Bootstrap resamples of the seeds (percentiles of 1000 resamples are stable to about ±0.01 of a slope)."""
CONFIDENCE = 0.95
"""Nominal coverage of every reported interval."""


def interval_quantiles(confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The lower and upper quantiles (as fractions) of a central interval, e.g. (0.025, 0.975)."""
    alpha = 1.0 - confidence
    return alpha / 2, 1.0 - alpha / 2


def normal_z(confidence: float = CONFIDENCE) -> float:
    """z with P(|N(0, 1)| ≤ z) = confidence (1.96 for 95 %): the half-width of a normal interval in SEs."""
    return float(NormalDist().inv_cdf(0.5 + confidence / 2))
