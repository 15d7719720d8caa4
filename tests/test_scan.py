"""The fast and compiled scans against the reference loop: outputs, gradients and probe statistics.

Every test that compares a backend with the reference runs for each backend in BACKENDS; the
compiled one is skipped (with the reason) only where it cannot be built (no C compiler).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_scan_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmscope.ssm.config import Discretization
from ssmscope.ssm.scan import ScanInputs, StateProbe, compiled, selective_scan
from ssmscope.ssm.scan.reference import state_sequence

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=6e-4, atol=2e-3)}
needs_compiled = pytest.mark.skipif(not compiled.is_available(), reason="the compiled scan cannot be built here")
BACKENDS = ["fast", pytest.param("compiled", marks=needs_compiled)]


def _run(backend, inputs, disc, probe=None, seed=1):
    """y and the gradients of a fixed random projection of y w.r.t. every input."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = selective_scan(*leaves, discretization=disc, backend=backend, probe=probe)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (y * w.to(y.dtype)).sum().backward()
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("disc", list(Discretization))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 37, 6, 4), (1, 64, 8, 16), (3, 5, 3, 2), (2, 97, 4, 8), (2, 19, 13, 33)])
def test_fast_scan_matches_reference_outputs_and_gradients(backend, disc, dtype, shape):
    inputs = make_scan_inputs(*shape, dtype=dtype)
    ref = _run("reference", [t.double() for t in inputs], disc)
    fast = _run(backend, inputs, disc)
    names = ["y", "u", "dt", "A", "B", "C", "D", "dt_bias"]
    for name, r, f in zip(names, ref, fast, strict=True):
        torch.testing.assert_close(f.double(), r, **TOL[dtype], msg=f"{name} differs ({disc})")


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), length=st.integers(1, 80), ed=st.integers(1, 6),
       n=st.integers(1, 9), disc=st.sampled_from(list(Discretization)), seed=st.integers(0, 99))
def test_fast_scan_matches_reference_for_random_shapes(batch, length, ed, n, disc, seed):
    inputs = make_scan_inputs(batch, length, ed, n, torch.float64, seed=seed)
    ref = _run("reference", inputs, disc)
    for backend in ["fast"] + (["compiled"] if compiled.is_available() else []):
        for r, f in zip(ref, _run(backend, inputs, disc), strict=True):
            torch.testing.assert_close(f, r, rtol=1e-9, atol=1e-9, msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_scan_is_stable_when_modes_decay_within_one_step(backend):
    """N_x = 512 modes with Δ up to 1: ΔA reaches −512 per step without overflow."""
    inputs = make_scan_inputs(2, 40, 3, 512, torch.float32, dt_shift=0.5)
    ref = _run("reference", [t.double() for t in inputs], "zoh")
    fast = _run(backend, inputs, "zoh")
    assert all(torch.isfinite(f).all() for f in fast)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f.double(), r, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_zoh_tends_to_euler_as_delta_A_vanishes(backend):
    u, dt, A, B, C, D, _ = make_scan_inputs(2, 30, 4, 8, torch.float64)
    errors = []
    for shift in (-8.0, -12.0, -16.0):  # Δ ≈ e^shift
        bias = torch.full((4,), shift, dtype=torch.float64)
        args = (u, dt * 0, A, B, C, D * 0, bias)
        zoh = selective_scan(*args, discretization="zoh", backend=backend)
        euler = selective_scan(*args, discretization="euler", backend=backend)
        errors.append(((zoh - euler).norm() / euler.norm()).item())
    # the relative gap is O(Δ·|A|): it shrinks by about e^4 per step of the shift
    assert errors[0] < 1e-2
    assert errors[1] < errors[0] / 20 and errors[2] < errors[1] / 20


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("disc", list(Discretization))
def test_scan_passes_gradcheck_in_float64(backend, disc):
    inputs = [t.requires_grad_() for t in make_scan_inputs(1, 6, 2, 3, torch.float64)]

    def f(*args):
        return selective_scan(*args, discretization=disc, backend=backend)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("disc", list(Discretization))
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_probe_statistics_equal_norms_of_explicit_states(backend, disc):
    inputs = make_scan_inputs(2, 45, 5, 6, torch.float64)
    moved = [t.clone() for t in inputs]
    moved[3] = moved[3] + 0.1  # a different B: the "reference" scan for Δx
    ref_probe = StateProbe()
    selective_scan(*moved, discretization=disc, backend="reference", probe=ref_probe)
    probe = StateProbe(references={"init": ref_probe.inputs}, keep_states=True, want_grad=True)
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = selective_scan(*leaves, discretization=disc, backend=backend, probe=probe)
    (y.square().sum() / 2).backward()
    # explicit states from the reference recurrence
    xs = torch.stack(state_sequence(probe.inputs), dim=1)  # (B, L, ED, N)
    xs_ref = torch.stack(state_sequence(ref_probe.inputs), dim=1)
    torch.testing.assert_close(probe.states, xs)
    torch.testing.assert_close(probe.state_sumsq, xs.square().sum(-1))
    torch.testing.assert_close(probe.state_maxabs, xs.abs().amax(-1))
    torch.testing.assert_close(probe.delta_sumsq["init"], (xs - xs_ref).square().sum(-1))
    assert probe.delta_sumsq["init"].sum() > 0
    # ∂L/∂x_t by autograd on explicit states: L = ½‖y‖², y_t = C_t·x_t + D u_t
    x_leaf = xs.detach().requires_grad_()
    _, delta, A, _, C, _ = probe.inputs
    # adjoint: total derivative through the recurrence, computed by a reverse loop
    a = torch.exp(delta[..., None] * A)
    gy = y.detach()
    g = torch.zeros_like(x_leaf[:, 0])
    adj = []
    for t in reversed(range(xs.shape[1])):
        g = gy[:, t, :, None] * C[:, t, None, :] + (a[:, t + 1] * g if t + 1 < xs.shape[1] else 0)
        adj.append(g)
    adj = torch.stack(adj[::-1], dim=1)
    torch.testing.assert_close(probe.grad_sumsq, adj.square().sum(-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_references_recompute_identical_inputs_to_zero_delta(backend):
    inputs = make_scan_inputs(2, 33, 4, 5, torch.float32)
    first = StateProbe()
    selective_scan(*inputs, discretization="zoh", backend=backend, probe=first)
    again = StateProbe(references={"init": first.inputs})
    selective_scan(*inputs, discretization="zoh", backend=backend, probe=again)
    assert torch.equal(again.delta_sumsq["init"], torch.zeros_like(again.delta_sumsq["init"]))
    assert isinstance(first.inputs, ScanInputs)


@pytest.mark.parametrize("disc", list(Discretization))
@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_fast_scan_recompute_path_matches_reference(monkeypatch, disc, chunk):
    """With no memory budget the backward recomputes chunk states from chunk-start checkpoints."""
    import ssmscope.ssm.scan.fast as scan_fast

    monkeypatch.setattr(scan_fast, "SAVE_BUDGET_BYTES", 0)
    monkeypatch.setattr(scan_fast, "CHUNK", chunk)
    inputs = make_scan_inputs(2, 37, 5, 6, torch.float64)
    for r, f in zip(_run("reference", inputs, disc), _run("fast", inputs, disc), strict=True):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)
