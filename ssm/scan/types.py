"""What every scan backend shares: its inputs, the probe side channel and its signature.

Every backend computes, for channel i and state n (Mamba's S6, paper eqs. for x and y):
    Δ_t   = softplus(dt_t + dt_bias)                         (B, L, ED)
    x_t   = exp(Δ_t A) ⊙ x_{t−1} + κ(Δ_t, A) ⊙ B_t u_t       (B, L, ED, N)
    y_t   = Σ_n C_t[n] x_t[:, n] + D ⊙ u_t                   (B, L, ED)
with x_0 = 0 and κ from ssm.scan.discretize. A backend is a function with the signature `ScanFn`;
it may fill a `StateProbe` (what probes need to know about the latent state x, which no module
hook can see) without keeping (B, L, ED, N) unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch.nn.functional as F
from torch import Tensor

from ssmscope.ssm.config import Discretization


class ScanInputs(NamedTuple):
    """The detached inputs of one scan call: enough to recompute its states (for Δx)."""

    u: Tensor  # (B, L, ED)
    delta: Tensor  # (B, L, ED), after softplus
    A: Tensor  # (ED, N)
    B: Tensor  # (B, L, N)
    C: Tensor  # (B, L, N)
    discretization: Discretization


@dataclass
class StateProbe:
    """Request for, and receiver of, latent-state statistics from one scan call.

    Requests: `references` (name → ScanInputs whose states x_ref the scan recomputes alongside,
    to give Σ_n (x − x_ref)² without storing either sequence), `keep_states` (the full states;
    small sizes only), `want_grad` (Σ_n (∂L/∂x_t)², filled during backward, where ∂L/∂x_t is
    the total derivative: the adjoint state).
    Outputs, all (B, L, ED) sums over N unless noted, filled by the scan.
    """

    references: dict[str, ScanInputs] = field(default_factory=dict)
    keep_states: bool = False
    want_grad: bool = False
    # --- outputs ---
    inputs: ScanInputs | None = None
    state_sumsq: Tensor | None = None
    state_maxabs: Tensor | None = None  # (B, L, ED) max_n |x|
    delta_sumsq: dict[str, Tensor] = field(default_factory=dict)
    delta_maxabs: dict[str, Tensor] = field(default_factory=dict)
    states: Tensor | None = None  # (B, L, ED, N), only with keep_states
    grad_sumsq: Tensor | None = None  # (B, L, ED), filled in backward


class ScanFn(Protocol):
    def __call__(
        self,
        u: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor,
        dt_bias: Tensor,
        discretization: Discretization,
        probe: StateProbe | None,
    ) -> Tensor: ...


def softplus_delta(dt: Tensor, dt_bias: Tensor) -> Tensor:
    """Δ = softplus(dt + dt_bias): (B, L, ED)."""
    return F.softplus(dt + dt_bias)
