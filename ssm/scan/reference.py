"""Reference selective scan: a plain sequential loop over time, in any dtype (float64 too).

The ground truth every other backend is tested against. Autograd differentiates it; the
loop uses `unbind` rather than per-step indexing so that backward stays linear in L.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmscope.ssm.config import Discretization
from ssmscope.ssm.scan.discretize import decay, input_coefficient
from ssmscope.ssm.scan.types import ScanInputs, StateProbe, softplus_delta


def discretized(inputs: ScanInputs) -> tuple[Tensor, Tensor]:
    """(Ā, B̄u) for every step: both (B, L, ED, N)."""
    u, delta, A, B, _, disc = inputs
    delta_A = delta[..., None] * A  # (B, L, ED, N)
    a = decay(delta_A)
    bu = input_coefficient(delta[..., None], A, delta_A, disc) * B[:, :, None, :] * u[..., None]
    return a, bu  # (B, L, ED, N) each


def state_sequence(inputs: ScanInputs) -> list[Tensor]:
    """x_1..x_L as a list of (B, ED, N) tensors (differentiable)."""
    a, bu = discretized(inputs)
    x = torch.zeros_like(bu[:, 0])  # (B, ED, N)
    states = []
    for a_t, bu_t in zip(a.unbind(1), bu.unbind(1), strict=True):
        x = a_t * x + bu_t
        states.append(x)
    return states


def scan_reference(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    discretization: Discretization,
    probe: StateProbe | None = None,
) -> Tensor:
    """Sequential S6 scan; see ssm.scan.selective_scan for shapes. Computes in u's dtype."""
    delta = softplus_delta(dt, dt_bias)  # (B, L, ED)
    inputs = ScanInputs(u, delta, A, B, C, discretization)
    states = state_sequence(inputs)
    xs = torch.stack(states, dim=1)  # (B, L, ED, N)
    y = torch.einsum("blen,bln->ble", xs, C) + u * D  # (B, L, ED)
    if probe is not None:
        _fill_probe(probe, inputs, xs, states)
    return y


def _fill_probe(probe: StateProbe, inputs: ScanInputs, xs: Tensor, states: list[Tensor]) -> None:
    with torch.no_grad():
        probe.inputs = ScanInputs(*(t.detach() for t in inputs[:5]), inputs.discretization)
        probe.state_sumsq = xs.square().sum(-1)
        probe.state_maxabs = xs.abs().amax(-1)
        if probe.keep_states:
            probe.states = xs.detach().clone()
        for name, ref in probe.references.items():
            ref_xs = torch.stack(state_sequence(ref), dim=1).to(xs.dtype)
            diff = xs - ref_xs
            probe.delta_sumsq[name] = diff.square().sum(-1)
            probe.delta_maxabs[name] = diff.abs().amax(-1)
    if probe.want_grad and xs.requires_grad:
        n_steps = len(states)
        grads: list[Tensor | None] = [None] * n_steps

        def make_hook(t: int):
            def hook(g: Tensor) -> None:
                grads[t] = g.detach().square().sum(-1)  # (B, ED)
                if all(x is not None for x in grads):
                    probe.grad_sumsq = torch.stack(grads, dim=1)  # (B, L, ED)

            return hook

        for t, x_t in enumerate(states):
            x_t.register_hook(make_hook(t))
