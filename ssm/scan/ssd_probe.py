"""SSDStateProbe: the SSD state h's statistics for probes, as StateProbe gives them for S6's x.

No module hook sees the state h_t (P×N per head) of Mamba-2's scan, so the mixer hands its probe the scan's
inputs and output (`observe`); the probe recomputes the recurrence (ssm.scan.ssd),
    h_t = exp(Δ_t·a_h)·h_{t−1} + Δ_t·x_t B_tᵀ,
under no_grad in the inputs' dtype, one time step at a time, and keeps per-(b, t, channel) sums of squares over N
(channel = one of the d_inner = H·P rows of h, head-major as the mixer flattens x), never the (Bt, L, H, P, N)
states. References (earlier inputs, e.g. the init step's) run in the same loop as a leading batch of
recurrences, giving Σ_n (h − h_ref)². With `want_grad`, a hook on the scan output y runs the adjoint backwards,
    λ_t = ∂L/∂y_t ⊗ C_t + exp(Δ_{t+1}·a_h)·λ_{t+1}    (∂L/∂h_t, the total derivative),
and keeps its per-channel sums of squares. The model's output and gradients are untouched (the hook reads only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


class SSDInputs(NamedTuple):
    """The detached inputs of one SSD scan call (shapes as ssm.scan.ssd): enough to recompute its states."""

    x: Tensor  # (Bt, L, H, P)
    delta: Tensor  # (Bt, L, H), softplus'd and clamped
    A: Tensor  # (H,)
    B: Tensor  # (Bt, L, G, N)
    C: Tensor  # (Bt, L, G, N)
    D: Tensor | None  # (H,)


def _heads(t: Tensor, nheads: int) -> Tensor:
    """(..., G, N) → (..., H, N): each group's row repeated for its H/G heads."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


@dataclass
class SSDStateProbe:
    """Request for, and receiver of, SSD state statistics from one mixer forward (and its backward).

    Outputs: (Bt, L, H·P) sums over N of h² (`state_sumsq`), of (h − h_ref)² per reference (`delta_sumsq`) and of
    λ² (`grad_sumsq`, filled in backward), each with a scalar max |·| over all elements.
    """

    references: dict[str, SSDInputs] = field(default_factory=dict)
    want_grad: bool = False
    # --- outputs ---
    inputs: SSDInputs | None = None
    state_sumsq: Tensor | None = None
    state_maxabs: Tensor | None = None
    delta_sumsq: dict[str, Tensor] = field(default_factory=dict)
    delta_maxabs: dict[str, Tensor] = field(default_factory=dict)
    grad_sumsq: Tensor | None = None
    grad_maxabs: Tensor | None = None

    def observe(self, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                y: Tensor) -> None:
        """Called by the mixer with the scan's inputs and its output y (Bt, L, H, P)."""
        with torch.no_grad():
            self.inputs = SSDInputs(x.detach(), delta.detach(), A.detach(), B.detach(), C.detach(),
                                    None if D is None else D.detach())
            self._forward_sums()
        if self.want_grad and y.requires_grad:
            y.register_hook(self._on_grad_y)

    def _forward_sums(self) -> None:
        inp = self.inputs
        assert inp is not None
        runs = [inp, *self.references.values()]
        for ref in runs[1:]:
            if ref.x.shape != inp.x.shape or ref.B.shape != inp.B.shape:
                raise ValueError(f"reference inputs of shape {tuple(ref.x.shape)} for a scan of "
                                 f"{tuple(inp.x.shape)}: references must come from the same probe batch")
        dt = inp.x.dtype
        nheads = inp.x.shape[2]
        decay = torch.stack([torch.exp(r.delta * r.A) for r in runs]).to(dt)  # (K, Bt, L, H)
        dx = torch.stack([r.x * r.delta[..., None] for r in runs]).to(dt)  # (K, Bt, L, H, P)
        b = torch.stack([_heads(r.B, nheads) for r in runs]).to(dt)  # (K, Bt, L, H, N)
        k, bt, length, _, p = dx.shape
        h = dx.new_zeros(k, bt, nheads, p, b.shape[-1])
        sumsq, maxabs = [], []
        for t in range(length):
            h = decay[:, :, t, :, None, None] * h + dx[:, :, t, :, :, None] * b[:, :, t, :, None, :]
            v = torch.cat([h[:1], h[:1] - h[1:]]) if k > 1 else h  # the state, then its differences
            sumsq.append(v.square().sum(-1).flatten(-2))  # (K, Bt, H·P)
            maxabs.append(v.abs().flatten(1).amax(1))  # (K,)
        sq = torch.stack(sumsq, dim=2)  # (K, Bt, L, H·P)
        mx = torch.stack(maxabs, dim=1).amax(1)  # (K,)
        self.state_sumsq, self.state_maxabs = sq[0], mx[0]
        for i, name in enumerate(self.references, start=1):
            self.delta_sumsq[name], self.delta_maxabs[name] = sq[i], mx[i]

    def _on_grad_y(self, g: Tensor) -> None:
        """λ_t from ∂L/∂y, reverse time; per-channel Σ_n λ², max |λ|."""
        inp = self.inputs
        assert inp is not None
        with torch.no_grad():
            g = g.detach().to(inp.x.dtype)
            nheads = inp.x.shape[2]
            c = _heads(inp.C, nheads)  # (Bt, L, H, N)
            decay = torch.exp(inp.delta * inp.A)  # (Bt, L, H)
            bt, length, _, p = g.shape
            lam = g.new_zeros(bt, nheads, p, c.shape[-1])
            sumsq: list[Tensor] = [g.new_empty(0)] * length
            maxabs = []
            for t in range(length - 1, -1, -1):
                if t + 1 < length:
                    lam = decay[:, t + 1, :, None, None] * lam
                lam = lam + g[:, t, :, :, None] * c[:, t, :, None, :]
                sumsq[t] = lam.square().sum(-1).flatten(-2)  # (Bt, H·P)
                maxabs.append(lam.abs().amax())
            self.grad_sumsq = torch.stack(sumsq, dim=1)  # (Bt, L, H·P)
            self.grad_maxabs = torch.stack(maxabs).amax()
