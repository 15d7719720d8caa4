"""Shared fixtures: deterministic random scan inputs."""

from __future__ import annotations

import pytest
import torch


def make_scan_inputs(batch: int, length: int, ed: int, n: int, dtype: torch.dtype, seed: int = 0,
                     dt_shift: float = -2.0) -> list[torch.Tensor]:
    """(u, dt, A, B, C, D, dt_bias) with Mamba-like magnitudes; A = −(n+1) perturbed."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u = r(batch, length, ed)
    dt = r(batch, length, ed) * 0.5
    A = -(torch.arange(1, n + 1, dtype=torch.float64).repeat(ed, 1) * torch.exp(0.1 * r(ed, n)))
    B, C = r(batch, length, n), r(batch, length, n)
    D, dt_bias = r(ed), r(ed) * 0.3 + dt_shift
    return [t.to(dtype) for t in (u, dt, A, B, C, D, dt_bias)]


@pytest.fixture
def scan_inputs():
    return make_scan_inputs
