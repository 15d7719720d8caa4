"""Discretisation of the diagonal S6 system for a step Δ (pure functions).

Both rules share Ā = exp(ΔA); they differ in the input coefficient κ with B̄ = κ·B:
  Euler: κ = Δ                      (Mamba's reference code)
  ZOH:   κ = (exp(ΔA) − 1)/A = expm1(ΔA)/A, which tends to Δ as ΔA → 0.
expm1(ΔA)/A is exact and stable for every A < 0 (A = −exp(A_log) is never 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmscope.ssm.config import Discretization


def decay(delta_A: Tensor) -> Tensor:
    """Ā = exp(ΔA), shape of delta_A."""
    return torch.exp(delta_A)


def input_coefficient(delta: Tensor, A: Tensor, delta_A: Tensor, disc: Discretization) -> Tensor:
    """κ with B̄ = κ·B.

    delta: (..., ED, 1) broadcastable against A: (ED, N); delta_A = delta·A: (..., ED, N).
    Returns (..., ED, N) (Euler broadcasts delta to that shape).
    """
    if disc == Discretization.EULER:
        return delta.expand_as(delta_A)
    return torch.expm1(delta_A) / A
