"""The analyses' vocabularies: every word a fit, a verdict or a transfer analysis writes into a frame, as an enum.

The frames keep plain strings (polars, Parquet, CSV and the store's exports read them as such); code that
writes or compares them uses these members, so a word is spelt once and a misspelt comparison fails at
import, not silently. The CLI and the dashboard parse user input into them at the edges (Typer choices,
URL parameters). Run statuses are the store's (runs.store.schema.RunStatus).
"""

from __future__ import annotations

from enum import StrEnum


class FitStatus(StrEnum):
    """Whether a cell's exponent was fitted (runs.analysis.slopes.fit)."""

    OK = "ok"
    TOO_FEW_POINTS = "too_few_points"  # fewer distinct widths than MIN_WIDTHS on a fitted axis
    SINGULAR = "singular"  # the widths do not separate the terms (a 2-D fit on a diagonal grid)


class Verdict(StrEnum):
    """What a measured exponent does, whatever the theory says (runs.analysis.slopes.verdicts)."""

    FLAT = "flat"
    GROWS = "grows"
    VANISHES = "vanishes"


class Agreement(StrEnum):
    """Whether a measured exponent does what the theory predicts (runs.analysis.slopes.verdicts)."""

    AGREES = "agrees"
    DISAGREES = "disagrees"
    NO_PREDICTION = "no prediction"
    NOT_FITTED = "not fitted"


class Regime(StrEnum):
    """Linear response or not at the fitted step (runs.analysis.regime)."""

    LINEAR = "linear"
    NONLINEAR = "nonlinear"


class Trend(StrEnum):
    """Where a cell's running exponent is heading along width (runs.analysis.running)."""

    SETTLED = "settled"
    MOVING = "moving"
    TOWARD = "toward"  # moving, and closer to the prediction at the widest window
    AWAY = "away"  # moving, and further from the prediction


class TransferStatus(StrEnum):
    """Where a width's best learning rate lies on the grid (runs.analysis.transfer)."""

    INTERIOR = "interior"
    EDGE_LOW = "edge_low"  # the smallest learning rate of the grid is best: the optimum may lie below it
    EDGE_HIGH = "edge_high"  # the largest is best: the optimum may lie above it
    ALL_DIVERGED = "all_diverged"
    SINGLE_POINT = "single_point"


class TransferTable(StrEnum):
    """Which table `ssmscope transfer` prints."""

    DRIFT = "drift"  # per parameterization: drift of η*, the loss-at-optimum slope
    OPTIMA = "optima"  # per width: η*, the loss at it
    ETA = "eta"  # η* per width, one column per parameterization


class TableKind(StrEnum):
    """Which slope table `ssmscope slopes` and the dashboard show."""

    PAPER = "paper"  # the paper's four columns, one row per configuration
    FULL = "full"  # every fitted cell
    GROUPS = "groups"  # which parameter group moves Δx, Δy
    SLICES = "slices"  # Mamba-2: the output of each in_proj row block (z, x, B, C, dt), its value and change


class Design(StrEnum):
    """Which widths vary across the fitted points."""

    JOINT = "joint"  # N_u = N_x = width, one slope s
    N_U = "n_u"  # N_x held fixed (one fit per fixed N_x), slope in N_u
    N_X = "n_x"  # N_u held fixed (one fit per fixed N_u), slope in N_x
    TWO_D = "2d"  # every (N_u, N_x) point, slopes s_u and s_x


class LayerAgg(StrEnum):
    """How layers enter a fit."""

    EACH = "each"  # one fit per layer
    MEAN = "mean"  # fit the mean over layers of log2‖·‖ (= the mean of the per-layer slopes)
