"""Reductions from tensors (or per-channel sums of squares) to one probe record's raw sums.

Each reduction `*_sums(...)` returns, per tensor, (counts, sums): the integer counts, known from shapes (no
synchronisation), and a (4,) float64 tensor on the input's device with the float sums in the order
of SUM_KEYS. The Observer stacks the sums of a whole logged step and reads them with one `.tolist()`
(one device synchronisation per logged step); `as_record` turns counts and values into the record.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SUM_KEYS = ("sumsq", "maxabs", "token_norm_sum", "channel_norm_sum")


def _counts(shape: torch.Size, per_channel: int) -> dict[str, int]:
    n = math.prod(shape)
    return {"count": n * per_channel, "n_tokens": n // shape[-1] if n else 0, "n_channels": n}


def many_channel_sums(channel_sumsq: list[Tensor], per_channel: int,
                      maxabs: list[Tensor]) -> list[tuple[dict[str, int], Tensor]]:
    """Raw sums of several same-shape (B, L, C) tensors of per-channel sums of squares, in one stacked reduction.

    `per_channel` is how many elements each channel sum covers (N for the state, 1 for a plain (B, L, C)
    tensor). Token norms sum over C; channel norms take each channel alone."""
    counts = _counts(channel_sumsq[0].shape, per_channel)
    if channel_sumsq[0].numel() >= STACK_LIMIT:  # one by one, per token in their dtype (as many_activation_sums)
        rows = _large_channel_sums([t.detach() for t in channel_sumsq], [m.detach() for m in maxabs])
        return [(counts, row) for row in rows.unbind(0)]
    c = torch.stack([t.detach() for t in channel_sumsq]).double()  # (K, B, L, C)
    dims = tuple(range(1, c.dim()))
    token = c.sum(-1).sqrt()  # (K, B, L)
    mx = torch.stack([m.detach().max() for m in maxabs]).double()
    sums = torch.stack([c.sum(dims), mx, token.sum(dims[:-1]), c.sqrt().sum(dims)], dim=1)  # (K, 4)
    return [(counts, row) for row in sums.unbind(0)]


def _large_channel_sums(cs: list[Tensor], maxabs: list[Tensor]) -> Tensor:
    """many_channel_sums' four sums of large same-shape (B, L, C) tensors of per-channel sums of squares, (K, 4):
    per token in their dtype, over tokens in float64, batched across the K (as _large_activation_sums)."""
    token_sq = torch.stack([c.sum(-1).flatten() for c in cs]).double()  # (K, tokens)
    chan = torch.stack([c.sqrt().sum(-1).flatten() for c in cs]).double()
    mx = torch.stack([m.max() for m in maxabs]).double()
    return torch.stack([token_sq.sum(1), mx, token_sq.sqrt().sum(1), chan.sum(1)], dim=1)


def many_activation_sums(vs: list[Tensor]) -> list[tuple[dict[str, int], Tensor]]:
    """Raw sums of several same-shape plain (B, L, C) activations at once.

    No float64 copy of the activations: the token norms accumulate in float64 inside one reduction, a
    coordinate's channel norm is its |v| (exact in the input's dtype), summed in float64; sumsq is the
    sum of the squared token norms. The same numbers as a float64 computation to ~1e-16 relative.

    Large tensors (STACK_LIMIT elements and more) are reduced one by one, per token in their own dtype
    (_large_activation_sums): stacking them would copy every activation once more, and float64 per-element work costs
    5-10× float32 (bench/probe_overhead_mamba2.py); small ones together, where per-tensor ops would cost more than
    the arithmetic."""
    counts = _counts(vs[0].shape, 1)
    if vs[0].numel() >= STACK_LIMIT:
        return [(counts, row) for row in _large_activation_sums([t.detach() for t in vs]).unbind(0)]
    v = torch.stack([t.detach() for t in vs])  # (K, B, L, C), the activations' dtype
    dims = tuple(range(1, v.dim()))
    a = v.abs()
    token = torch.linalg.vector_norm(v, dim=-1, dtype=torch.float64)  # (K, B, L)
    sums = torch.stack([token.square().sum(dims[:-1]), a.amax(dims).double(), token.sum(dims[:-1]),
                        a.sum(dims, dtype=torch.float64)], dim=1)
    return [(counts, row) for row in sums.unbind(0)]


STACK_LIMIT = 1 << 15
"""Activations of at least this many elements are reduced one by one (many_activation_sums)."""


def _large_activation_sums(vs: list[Tensor]) -> Tensor:
    """many_activation_sums' four sums of large same-shape activations, (K, 4): each token's norm and Σ|v| over its C
    channels in the activation's dtype (a float32 sum of C terms is exact to ~1e-7 relative, and casting the whole
    tensor to float64 first costs 5-10× the reduction), then the per-token results of all K stacked and summed in
    float64 in a few ops; max |v| from aminmax (no |v| temporary). A float64 activation is summed in float64
    throughout. Three reductions per tensor, the rest batched: at small widths the op count is the cost."""
    token = torch.stack([torch.linalg.vector_norm(v, dim=-1).flatten() for v in vs]).double()  # (K, tokens)
    l1 = torch.stack([torch.linalg.vector_norm(v, ord=1, dim=-1).flatten() for v in vs]).double()
    extremes = torch.stack([torch.stack(torch.aminmax(v)) for v in vs]).double()  # (K, 2): min, max
    return torch.stack([token.square().sum(1), torch.maximum(-extremes[:, 0], extremes[:, 1]), token.sum(1),
                        l1.sum(1)], dim=1)


PARAM_BATCH = 1 << 14  # parameters up to this many elements are reduced together (ManyParamSums)


def param_sums(p: Tensor) -> tuple[dict[str, int], Tensor]:
    """Raw sums of a parameter tensor (Frobenius norm; one 'token', one 'channel' per row).

    Row norms accumulate in float64 inside one reduction (no float64 copy of the tensor):
    the float64 sums of squares to ≤ 1e-15 relative.
    """
    p = p.detach()
    rows = p.reshape(p.shape[0], -1) if p.dim() > 1 else p.reshape(-1, 1)
    norms = torch.linalg.vector_norm(rows, dim=-1, dtype=torch.float64)  # (rows,) ‖row‖₂
    total = norms.square().sum()
    if p.numel():
        lo, hi = torch.aminmax(p)
        mx = torch.maximum(-lo, hi).double()
    else:
        mx = norms.new_zeros(())
    counts = {"count": p.numel(), "n_tokens": 1, "n_channels": rows.shape[0]}
    return counts, torch.stack([total, mx, total.sqrt(), norms.sum()])


class ManyParamSums:
    """param_sums of a fixed list of parameter shapes in a few batched ops (one float64 copy of the
    tensors; for many small tensors, where per-tensor ops would cost more than the arithmetic).
    The same numbers as param_sums up to the order of additions (≤ 1e-15 relative)."""

    def __init__(self, shapes: list[torch.Size], device: torch.device | str = "cpu"):
        rc = [(s[0], math.prod(s) // s[0]) if len(s) > 1 else (math.prod(s), 1) for s in shapes]
        if any(r * c == 0 for r, c in rc):
            raise ValueError("ManyParamSums takes non-empty tensors only")
        rows = torch.tensor([r for r, _ in rc], device=device)
        self.row_lengths = torch.repeat_interleave(torch.tensor([c for _, c in rc], device=device), rows)
        self.rows_per = rows
        self.numels = torch.tensor([r * c for r, c in rc], device=device)
        self.counts = [{"count": r * c, "n_tokens": 1, "n_channels": r} for r, c in rc]

    def __call__(self, tensors: list[Tensor]) -> list[tuple[dict[str, int], Tensor]]:
        if not tensors:
            return []
        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).double()
        sq = torch.segment_reduce(flat.square(), "sum", lengths=self.row_lengths)  # per row
        total = torch.segment_reduce(sq, "sum", lengths=self.rows_per)
        chan = torch.segment_reduce(sq.sqrt(), "sum", lengths=self.rows_per)
        mx = torch.segment_reduce(flat.abs(), "max", lengths=self.numels)
        sums = torch.stack([total, mx, total.sqrt(), chan], dim=1)  # (P, 4)
        return list(zip(self.counts, sums.unbind(0), strict=True))


def as_record(counts: dict[str, int], values: list[float]) -> dict[str, float]:
    """The record's dict (probes.schema order) from counts and the SUM_KEYS values."""
    s = dict(zip(SUM_KEYS, values, strict=True))
    return {"sumsq": s["sumsq"], "count": counts["count"], "maxabs": s["maxabs"],
            "token_norm_sum": s["token_norm_sum"], "n_tokens": counts["n_tokens"],
            "channel_norm_sum": s["channel_norm_sum"], "n_channels": counts["n_channels"]}


# A double rounds to a finite float32 below FLT_MAX + half an ulp of it (2^103; the tie goes to even: inf).
_F32_LIMIT = float(torch.finfo(torch.float32).max) + 2.0**103


def is_finite_record(rec: dict[str, float]) -> bool:
    """False when any raw sum overflowed or turned NaN: not finite as a float32 (the models' dtype),
    as `torch.isfinite(torch.tensor(value))` would say, without building a tensor per value."""
    return all(abs(float(rec[k])) < _F32_LIMIT for k in ("sumsq", "maxabs"))
