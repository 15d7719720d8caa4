"""Reductions from tensors (or per-channel sums of squares) to one probe record's raw sums."""

from __future__ import annotations

import torch
from torch import Tensor


def summarize_channels(channel_sumsq: Tensor, per_channel: int, maxabs: Tensor | float) -> dict[str, float]:
    """Raw sums of a (B, L, C) tensor of per-channel sums of squares.

    `per_channel` is how many elements each channel sum covers (N for the state, 1 for a
    plain (B, L, C) tensor). Token norms sum over C; channel norms take each channel alone.
    """
    c = channel_sumsq.detach().double()  # (B, L, C)
    token = c.sum(-1).sqrt()  # (B, L)
    mx = maxabs.detach().max().item() if isinstance(maxabs, Tensor) else float(maxabs)
    return {
        "sumsq": c.sum().item(),
        "count": c.numel() * per_channel,
        "maxabs": mx,
        "token_norm_sum": token.sum().item(),
        "n_tokens": token.numel(),
        "channel_norm_sum": c.sqrt().sum().item(),
        "n_channels": c.numel(),
    }


def summarize(v: Tensor) -> dict[str, float]:
    """Raw sums of a plain (B, L, C) activation."""
    v = v.detach()
    return summarize_channels(v.double().square(), 1, v.abs().max())


def summarize_param(p: Tensor) -> dict[str, float]:
    """Raw sums of a parameter tensor (Frobenius norm; one 'token', one 'channel' per row)."""
    p = p.detach().double()
    rows = p.reshape(p.shape[0], -1) if p.dim() > 1 else p.reshape(-1, 1)
    sq = rows.square().sum(-1)  # (rows,)
    total = sq.sum()
    return {
        "sumsq": total.item(),
        "count": p.numel(),
        "maxabs": p.abs().max().item() if p.numel() else 0.0,
        "token_norm_sum": total.sqrt().item(),
        "n_tokens": 1,
        "channel_norm_sum": sq.sqrt().sum().item(),
        "n_channels": rows.shape[0],
    }


def is_finite_record(rec: dict[str, float]) -> bool:
    """False when any raw sum overflowed or turned NaN."""
    return all(torch.isfinite(torch.tensor(float(rec[k]))) for k in ("sumsq", "maxabs"))
