"""The selective scan: one signature, several backends, and the probe side channel.

Every backend computes, for channel i and state n (Mamba's S6, paper eqs. for x and y):
    Δ_t   = softplus(dt_t + dt_bias)                         (B, L, ED)
    x_t   = exp(Δ_t A) ⊙ x_{t−1} + κ(Δ_t, A) ⊙ B_t u_t       (B, L, ED, N)
    y_t   = Σ_n C_t[n] x_t[:, n] + D ⊙ u_t                   (B, L, ED)
with x_0 = 0 and κ from ssm.discretize. A backend is a function with the signature of
`selective_scan` minus `backend`; it may fill a `StateProbe` (what probes need to know about
the latent state x, which no module hook can see) without keeping (B, L, ED, N) unless asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.config import Discretization, ScanBackend
from ssm.errors import ConfigError

log = logging.getLogger(__name__)


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


def _load_backend(name: ScanBackend) -> ScanFn:
    if name == ScanBackend.REFERENCE:
        from ssm.scan_ref import scan_reference

        return scan_reference
    if name == ScanBackend.FAST:
        from ssm.scan_fast import scan_fast

        return scan_fast
    if name == ScanBackend.TRITON:
        try:
            from ssm.scan_triton import scan_triton
        except ImportError as exc:  # triton missing, or the backend not built yet
            raise ConfigError(
                f"scan=triton is unavailable ({exc}); use scan=fast (the torch scan) instead"
            ) from None
        return scan_triton
    raise ConfigError(f"scan={name!r}; allowed: {', '.join(b.value for b in ScanBackend)}")


_announced: set[tuple[str, str]] = set()


def resolve_backend(name: ScanBackend | str, device: torch.device) -> ScanBackend:
    """AUTO → triton on CUDA when it imports, else fast; logs the automatic choice once."""
    name = ScanBackend(name)
    if name != ScanBackend.AUTO:
        return name
    chosen = ScanBackend.FAST
    if device.type == "cuda":
        try:
            import ssm.scan_triton  # noqa: F401

            chosen = ScanBackend.TRITON
        except ImportError as exc:
            key = ("fallback", str(exc))
            if key not in _announced:
                log.warning("triton scan unavailable on %s (%s); using the fast torch scan", device, exc)
                _announced.add(key)
    key = (device.type, chosen.value)
    if key not in _announced:
        log.info("scan=auto on %s → %s", device.type, chosen.value)
        _announced.add(key)
    return chosen


_BACKENDS: dict[ScanBackend, ScanFn] = {}


def get_backend(name: ScanBackend | str, device: torch.device) -> ScanFn:
    """The scan function for a backend name (AUTO resolved for the device)."""
    resolved = resolve_backend(name, device)
    if resolved not in _BACKENDS:
        _BACKENDS[resolved] = _load_backend(resolved)
    return _BACKENDS[resolved]


def selective_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    *,
    discretization: Discretization | str,
    backend: ScanBackend | str = ScanBackend.AUTO,
    probe: StateProbe | None = None,
) -> Tensor:
    """Run the S6 recurrence.

    u, dt: (B, L, ED); A: (ED, N) (negative); B, C: (B, L, N); D, dt_bias: (ED,).
    Returns y: (B, L, ED) in u's dtype.
    """
    fn = get_backend(backend, u.device)
    return fn(u, dt, A, B, C, D, dt_bias, Discretization(discretization), probe)


