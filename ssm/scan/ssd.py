"""The SSD scan of Mamba-2: a sequential reference and the chunked (state-space dual) form, both in torch.

Shapes (P = headdim, N = d_state, G = ngroups, H = nheads, heads h·G/H .. share group h // (H/G)):
    x (Bt, L, H, P), delta (Bt, L, H) — already softplus'd and clamped — A (H,) negative, B, C (Bt, L, G, N),
    D (H,) or None, initial_state (Bt, H, P, N) or None.
Recurrence per head: h_t = exp(Δ_t·a)·h_{t−1} + Δ_t·x_t B_tᵀ (h ∈ R^{P×N}), y_t = h_t C_t + D·x_t.
Both return y (Bt, L, H, P) and, with return_final_state, also h_L (Bt, H, P, N). They compute in x's dtype.
`ssd_chunked` follows state-spaces/mamba's `ssd_minimal_discrete`: quadratic (attention-like) within a chunk,
the state passed between chunks by a second, chunk-level recurrence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _heads(t: Tensor, nheads: int) -> Tensor:
    """(Bt, L, G, N) → (Bt, L, H, N): each group's row repeated for its H/G heads."""
    return t.repeat_interleave(nheads // t.shape[2], dim=2)


def _finish(y: Tensor, x: Tensor, D: Tensor | None, state: Tensor, return_final_state: bool):
    if D is not None:
        y = y + x * D[:, None]
    return (y, state) if return_final_state else y


def ssd_reference(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                  initial_state: Tensor | None = None, return_final_state: bool = False):
    """The recurrence, one step at a time (the test oracle; any dtype, float64 included)."""
    bt, _, nheads, p = x.shape
    Bh, Ch = _heads(B, nheads), _heads(C, nheads)  # (Bt, L, H, N)
    h = x.new_zeros(bt, nheads, p, B.shape[-1]) if initial_state is None else initial_state
    decay = torch.exp(delta * A)  # (Bt, L, H)
    ys = []
    for x_t, d_t, a_t, b_t, c_t in zip(x.unbind(1), delta.unbind(1), decay.unbind(1), Bh.unbind(1), Ch.unbind(1),
                                       strict=True):
        h = a_t[..., None, None] * h + (d_t[..., None] * x_t)[..., None] * b_t[:, :, None, :]  # (Bt, H, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, c_t))
    return _finish(torch.stack(ys, dim=1), x, D, h, return_final_state)


def segsum(a: Tensor) -> Tensor:
    """(..., T) → (..., T, T): out[i, j] = a[j+1] + … + a[i] for j ≤ i, −inf above the diagonal (stable form)."""
    t = a.shape[-1]
    a = a[..., None].expand(*a.shape, t)  # a[..., i, j] = a_i
    strict = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(a.masked_fill(~strict, 0), dim=-2)
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), diagonal=0)
    return sums.masked_fill(~lower, float("-inf"))


def ssd_chunked(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                initial_state: Tensor | None = None, return_final_state: bool = False, chunk_size: int = 64):
    """The chunked SSD form. L need not be a multiple of chunk_size: the tail is padded with Δ = 0 (decay 1, no
    input), which changes neither the outputs kept nor the final state."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    chunk_size = min(chunk_size, x.shape[1])  # a sequence shorter than a chunk is one chunk, never padded to it
    bt, length, nheads, p = x.shape
    pad = (-length) % chunk_size
    Bh, Ch = _heads(B, nheads), _heads(C, nheads)
    xs, ds = x * delta[..., None], delta * A  # X = x·Δ, A·Δ, as ssd_minimal_discrete is called
    if pad:
        xs, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, Bh, Ch))
        ds = F.pad(ds, (0, 0, 0, pad))
    nc = (length + pad) // chunk_size
    xs, Bh, Ch = (t.reshape(bt, nc, chunk_size, *t.shape[2:]) for t in (xs, Bh, Ch))  # (Bt, c, l, H, ·)
    ds = ds.reshape(bt, nc, chunk_size, nheads).permute(0, 3, 1, 2)  # (Bt, H, c, l)
    cum = torch.cumsum(ds, dim=-1)
    # 1. within each chunk: y = (C Bᵀ ∘ decay) X
    decay_in = torch.exp(segsum(ds))  # (Bt, H, c, l, s)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Ch, Bh, decay_in, xs)
    # 2. each chunk's own contribution to the state at its end
    decay_to_end = torch.exp(cum[..., -1:] - cum)  # (Bt, H, c, l)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, decay_to_end, xs)  # (Bt, c, H, P, N)
    # 3. the recurrence between chunks
    if initial_state is None:
        initial_state = states.new_zeros(states[:, :1].shape)
    else:
        initial_state = initial_state[:, None]
    states = torch.cat([initial_state, states], dim=1)  # (Bt, c+1, H, P, N)
    decay_chunk = torch.exp(segsum(F.pad(cum[..., -1], (1, 0))))  # (Bt, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = states[:, :-1], states[:, -1]
    # 4. the state entering each chunk, read out at every step of it
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states, torch.exp(cum))
    y = (y_diag + y_off).reshape(bt, nc * chunk_size, nheads, p)[:, :length]
    return _finish(y, x, D, final, return_final_state)
