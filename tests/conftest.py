"""Shared fixtures: deterministic random scan inputs, and the tiny sweep spec the sweep tests run."""

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


def tiny_spec_toml(name: str = "tiny", seq_len: int = 8, widths: tuple[int, ...] = (16, 32)) -> str:
    """A 4-run sweep spec (2 widths × sp, mup-ssm; ZOH, Adam, 2 steps, 2 layers) that trains in seconds."""
    return f"""
[sweep]
name = "{name}"
[grid]
widths = [{", ".join(str(w) for w in widths)}]
presets = ["sp", "mup-ssm"]
discretizations = ["zoh"]
optimizers = ["adam"]
lrs = [0.01]
seeds = [0]
[train]
steps = 2
batch = 2
seq_len = {seq_len}
n_layers = 2
"""
