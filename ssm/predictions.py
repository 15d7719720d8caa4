"""Predicted width-scaling exponents, as data (derivation: docs/theory.md).

Each row predicts how one probed quantity scales with width under one preset,
discretisation and optimizer family: ‖·‖ ∝ N_u^n_u · N_x^n_x (· log N_x when `log_x`),
in the per-coordinate RMS convention, in the asymptotic regime Δ·(n+1) ≫ 1 (most modes
forget within a step), after a few steps of training on the probe batch. Other norm
conventions follow by `in_convention`. These are hypotheses: the slope table puts them
beside what the sweeps measure.

Sites: x (latent state, per (channel, mode)), cx (the readout C·x), y (S6 output C·x + D⊙u),
grad_y, grad_x (∂L/∂y and the adjoint ∂L/∂x). Quantities: value (at the probed step; for
x, y the forward at init), delta_init (change from initialisation on the probe batch).

Mamba-2 (SSD) presets are rows of the same tables under SSD's discretisation (Euler: B̄ = Δ·B, Ā = exp(Δ·a)), with
the same site names: x is the SSD state H (headdim × d_state per head, N_u·N_x entries per token, as S6's), cx = H·C,
y the scan's output before the gated norm (docs/theory.md §10): `mamba2-mup-ssm`, and the two it is measured against,
`mamba2-sp` and the µP heuristic `mamba2-mup` (§10, "SP and the µP heuristic on SSD"). The public recipes are not
predicted: along N_u they are the µP heuristic up to their vector and conv rules, which the counting does not reach.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from ssmscope.ssm.config import FAMILY_OF_OPTIMIZER, Discretization


class Convention(StrEnum):
    """How a probed tensor's sums of squares become one norm (the axis label says which)."""

    RMS = "rms"  # sqrt(Σ v² / #elements): per-coordinate size
    L2 = "l2"  # sqrt(Σ v²) over the whole probe-batch tensor
    TOKEN_L2 = "token_l2"  # mean over tokens of ‖v_token‖₂ (the paper's per-token L2)
    CHANNEL_L2 = "channel_l2"  # mean over (token, channel) of ‖x^(i)‖₂ (state: over N)


# Per-token element count of each site, as exponents of (N_u, N_x); d_model ∝ N_u.
SITE_DIMS: dict[str, tuple[float, float]] = {
    "x": (1.0, 1.0),
    "grad_x": (1.0, 1.0),
    "y": (1.0, 0.0),
    "cx": (1.0, 0.0),
    "grad_y": (1.0, 0.0),
    "block_out": (1.0, 0.0),
}
# Per-channel vector length (the N axis for state sites, 1 otherwise).
CHANNEL_DIMS: dict[str, tuple[float, float]] = {
    "x": (0.0, 1.0), "grad_x": (0.0, 1.0), "y": (0.0, 0.0), "cx": (0.0, 0.0),
    "grad_y": (0.0, 0.0), "block_out": (0.0, 0.0),
}


def convention_shift(site: str, convention: Convention | str) -> tuple[float, float]:
    """Exponent shift (n_u, n_x) from RMS to `convention` for a site (½ per counted dim)."""
    convention = Convention(convention)
    if convention == Convention.RMS:
        return (0.0, 0.0)
    dims = CHANNEL_DIMS[site] if convention == Convention.CHANNEL_L2 else SITE_DIMS[site]
    return (dims[0] / 2, dims[1] / 2)


@dataclass(frozen=True)
class Prediction:
    preset: str
    discretization: Discretization
    optimizer: str  # optimizer family: sgd | adam
    site: str
    quantity: str
    n_u: float
    n_x: float
    log_x: bool = False
    convention: Convention = Convention.RMS
    note: str = ""

    def in_convention(self, convention: Convention | str) -> Prediction:
        du, dx = convention_shift(self.site, convention)
        return replace(self, n_u=self.n_u + du, n_x=self.n_x + dx, convention=Convention(convention))


_Z, _E = Discretization.ZOH, Discretization.EULER
_FLOOR = "D⊙u floors y at Θ(1) where C·x vanishes: compare cx"

# (preset, disc) → forward exponents at init, per site (same for both optimizers).
_FORWARD: dict[tuple[str, Discretization], dict[str, tuple[float, float]]] = {
    ("sp", _E): {"x": (0, 0), "cx": (0, 0.5), "y": (0, 0.5), "grad_y": (-0.5, 0), "grad_x": (-0.5, 0)},
    ("sp", _Z): {"x": (0, -0.5), "cx": (0, 0), "y": (0, 0), "grad_y": (-0.5, 0), "grad_x": (-0.5, 0)},
    ("mup", _E): {"x": (-0.5, 0.5), "cx": (-1, 1.5), "y": (-1, 1.5), "grad_y": (-1, 0),
                  "grad_x": (-1.5, 0.5)},
    ("mup", _Z): {"x": (-0.5, 0), "cx": (-1, 1), "y": (-1, 1), "grad_y": (-1, 0),
                  "grad_x": (-1.5, 0.5)},
    ("mup-ssm", _E): {"x": (0, 0), "cx": (0, 0), "y": (0, 0), "grad_y": (-1, 0), "grad_x": (-1, -0.5)},
    ("mup-ssm", _Z): {"x": (0, -0.5), "cx": (0, 0), "y": (0, 0), "grad_y": (-1, 0), "grad_x": (-1, 0)},
    # SSD: a scalar A per head, so every mode carries signal as S6 under Euler; C a µP read-out over N_x
    ("mamba2-mup-ssm", _E): {"x": (0, 0), "cx": (0, 0), "y": (0, 0), "grad_y": (-1, 0), "grad_x": (-1, -0.5)},
    # fan-in init of every in_proj block: H Θ(1) in every mode, C·H an incoherent sum over N_x modes
    ("mamba2-sp", _E): {"x": (0, 0), "cx": (0, 0.5), "y": (0, 0.5), "grad_y": (-0.5, 0), "grad_x": (-0.5, 0)},
    ("mamba2-mup", _E): {"x": (0, 0), "cx": (0, 0.5), "y": (0, 0.5), "grad_y": (-1, 0), "grad_x": (-1, 0)},
}

# (preset, disc, optimizer family) → update exponents (delta_init) for x and y (= cx), and
# whether Δy carries a log N_x factor (Adam + ZOH: Σ_n 1/(n+1) over the state modes).
_UPDATES: dict[tuple[str, Discretization, str], tuple[tuple[float, float], tuple[float, float], bool]] = {
    ("sp", _E, "sgd"): ((1.5, 0), (1.5, 1), False),
    ("sp", _Z, "sgd"): ((1.5, -0.5), (1.5, 0), False),
    ("sp", _E, "adam"): ((1, 0), (1, 1), False),
    ("sp", _Z, "adam"): ((1, -0.5), (1, 0), True),
    ("mup", _E, "sgd"): ((-0.5, 1.5), (-1, 3), False),
    ("mup", _Z, "sgd"): ((-0.5, 1), (-1, 2), False),
    ("mup", _E, "adam"): ((0, 0), (-0.5, 1.5), False),
    ("mup", _Z, "adam"): ((0, -0.5), (-0.5, 0.5), True),
    ("mup-ssm", _E, "sgd"): ((0, 0), (0, 0), False),
    ("mup-ssm", _Z, "sgd"): ((0, -0.5), (0, 0), False),
    ("mup-ssm", _E, "adam"): ((0, 0), (0, 0), False),
    ("mup-ssm", _Z, "adam"): ((0, -0.5), (0, 0), True),
    ("mamba2-mup-ssm", _E, "sgd"): ((0, 0), (0, 0), False),
    ("mamba2-mup-ssm", _E, "adam"): ((0, 0), (0, 0), False),  # Σ_n over equal modes: ∝ N_x, no log (theory §10)
    ("mamba2-sp", _E, "adam"): ((1, 0), (1, 1), False),  # η fixed: every block's output moves ∝ d ∝ N_u; ΔC·H over N_x
    ("mamba2-mup", _E, "adam"): ((0, 0), (0, 1), False),  # η ∝ 1/N_u: ΔB, ΔC Θ(1); ΔC·H coherent over N_x modes
}


def _rows() -> list[Prediction]:
    rows = []
    for (preset, disc, opt), (dx, dy, log_y) in _UPDATES.items():
        for site, (nu, nx) in _FORWARD[(preset, disc)].items():
            note = _FLOOR if site == "y" and (nu < 0 or nx < 0) and (nu > 0 or nx > 0) else ""
            rows.append(Prediction(preset, disc, opt, site, "value", nu, nx, note=note))
        for site, (nu, nx), log_x in (("x", dx, False), ("cx", dy, log_y), ("y", dy, log_y)):
            rows.append(Prediction(preset, disc, opt, site, "delta_init", nu, nx, log_x=log_x))
    return rows


PREDICTIONS: tuple[Prediction, ...] = tuple(_rows())


def predictions(convention: Convention | str = Convention.RMS) -> list[Prediction]:
    """Every prediction, in the given norm convention."""
    return [p.in_convention(convention) for p in PREDICTIONS]


def lookup(preset: str, disc: Discretization | str, optimizer: str, site: str, quantity: str,
           convention: Convention | str = Convention.RMS) -> Prediction | None:
    """The prediction for one cell, or None if the theory says nothing about it (an optimizer without a
    learning-rate family included)."""
    family = FAMILY_OF_OPTIMIZER.get(str(optimizer))
    for p in PREDICTIONS:
        if (p.preset, p.discretization, p.optimizer, p.site, p.quantity) == (
                preset, Discretization(disc), family, site, quantity):
            return p.in_convention(convention)
    return None
