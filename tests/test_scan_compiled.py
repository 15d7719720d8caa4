"""What is specific to the compiled scan: its exp, chunked backward, probe sums at large N_x, threads,
NaN propagation, the build cache, and the fallback of scan=auto when it cannot be built.

The shared fast-vs-reference tests (tests/test_scan.py) run the compiled backend too.
"""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from conftest import make_scan_inputs

from ssmscope.ssm.config import Discretization, ScanBackend
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.scan import StateProbe, compiled, dispatch, selective_scan
from ssmscope.ssm.scan.reference import state_sequence

pytestmark = pytest.mark.skipif(not compiled.is_available(), reason="the compiled scan cannot be built here")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=6e-4, atol=2e-3)}
NAMES = ["y", "u", "dt", "A", "B", "C", "D", "dt_bias"]


def _run(backend, inputs, disc, probe=None, seed=1):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = selective_scan(*leaves, discretization=disc, backend=backend, probe=probe)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (y * w.to(y.dtype)).sum().backward()
    return [y.detach()] + [t.grad for t in leaves]


def _explicit(inputs: list[torch.Tensor], disc) -> tuple[torch.Tensor, torch.Tensor]:
    """(states (B, L, ED, N), adjoint for L = Σ y ⊙ w with the seed-1 w) by the float64 reference loop."""
    leaves = [t.double().clone().requires_grad_() for t in inputs]
    u, dt, A, B, C, D, dt_bias = leaves
    probe = StateProbe(keep_states=True, want_grad=True)
    y = selective_scan(u, dt, A, B, C, D, dt_bias, discretization=disc, backend="reference", probe=probe)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (y * w).sum().backward()
    return probe.states, probe.grad_sumsq


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_and_expm1_are_accurate_over_the_whole_range(dtype):
    x = torch.cat([torch.linspace(-700, 80, 20001, dtype=torch.float64),
                   torch.logspace(-30, 0, 601, dtype=torch.float64),
                   -torch.logspace(-30, 0, 601, dtype=torch.float64)]).to(dtype)
    e, em1 = compiled.exp_expm1(x)
    ulp = torch.finfo(dtype).eps
    lo = -87.0 if dtype == torch.float32 else -708.0  # below: exactly 0 (the true value is subnormal or 0)
    normal = x > lo
    ref_e, ref_m1 = torch.exp(x.double()), torch.expm1(x.double())
    assert ((e.double() - ref_e).abs() <= 4 * ulp * ref_e)[normal].all()
    assert (e[~normal] == 0).all() and (em1[~normal] == -1).all()
    # expm1 to a few ulp relative, also as x → 0 (no cancellation: ZOH's κ needs it)
    assert ((em1.double() - ref_m1).abs() <= 4 * ulp * ref_m1.abs()).all()
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1000.0, 0.0], dtype=dtype)
    e, em1 = compiled.exp_expm1(special)
    assert torch.isnan(e[0]) and torch.isnan(em1[0])
    assert e[1] == float("inf") and e[3] == float("inf") and em1[3] == float("inf")
    assert e[2] == 0 and em1[2] == -1 and e[4] == 1 and em1[4] == 0


@pytest.mark.parametrize("disc", list(Discretization))
@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_backward_from_chunk_start_states_matches_reference(monkeypatch, disc, chunk):
    """Short chunks: backward recomputes every chunk from its stored start state (odd L and ED, and
    N_x = 70: a full 64-mode tile and a partial one)."""
    monkeypatch.setattr(compiled, "chunk_for", lambda n: chunk)
    inputs = make_scan_inputs(2, 37, 11, 70, torch.float64)
    for name, r, f in zip(NAMES, _run("reference", inputs, disc), _run("compiled", inputs, disc), strict=True):
        torch.testing.assert_close(f, r, **TOL[torch.float64], msg=f"{name} ({disc}, chunk {chunk})")


@pytest.mark.parametrize("disc", list(Discretization))
def test_probe_sums_at_large_state_size_and_fast_decay_in_float32(disc):
    """N_x = 512, Δ up to ~1: ΔA down to about −512 per step. y, every gradient and every probe
    sum (Σ x², max |x|, Σ (x − x_ref)², max |x − x_ref|, Σ g²) against the float64 reference,
    at Mamba's float32 tolerances; ED = 11 (a partial channel block), odd L."""
    inputs = make_scan_inputs(2, 23, 11, 512, torch.float32, dt_shift=0.5)
    assert (torch.nn.functional.softplus(inputs[1] + inputs[6]).max() * -inputs[2].min()) > 400
    moved = [t.clone() for t in inputs]
    moved[3] = moved[3] + 0.05  # another B: the reference state x_ref
    first = StateProbe()
    selective_scan(*moved, discretization=disc, backend="compiled", probe=first)
    probe = StateProbe(references={"init": first.inputs}, want_grad=True)
    got = _run("compiled", inputs, disc, probe=probe)
    ref = _run("reference", [t.double() for t in inputs], disc)
    for name, r, f in zip(NAMES, ref, got, strict=True):
        assert torch.isfinite(f).all(), name
        torch.testing.assert_close(f.double(), r, **TOL[torch.float32], msg=f"{name} ({disc})")
    xs, grad_sumsq = _explicit(inputs, disc)
    xs_ref = torch.stack(state_sequence(first.inputs._replace(
        **{k: getattr(first.inputs, k).double() for k in ("u", "delta", "A", "B", "C")})), dim=1)
    checks = {
        "state_sumsq": (probe.state_sumsq, xs.square().sum(-1)),
        "state_maxabs": (probe.state_maxabs, xs.abs().amax(-1)),
        "delta_sumsq": (probe.delta_sumsq["init"], (xs - xs_ref).square().sum(-1)),
        "delta_maxabs": (probe.delta_maxabs["init"], (xs - xs_ref).abs().amax(-1)),
        "grad_sumsq": (probe.grad_sumsq, grad_sumsq),
    }
    for name, (f, r) in checks.items():
        assert r.abs().max() > 0, name
        torch.testing.assert_close(f.double(), r, **TOL[torch.float32], msg=f"{name} ({disc})")


@pytest.mark.parametrize("disc", list(Discretization))
def test_probe_sums_and_states_match_reference_in_float64(disc):
    """Two references (a different discretisation for one), keep_states, several chunks."""
    inputs = make_scan_inputs(3, 29, 9, 7, torch.float64)
    other = "euler" if disc == "zoh" else "zoh"
    refs = {}
    for name, shift, d in (("init", 0.1, disc), ("prev", -0.2, other)):
        moved = [t.clone() for t in inputs]
        moved[0] = moved[0] + shift
        p = StateProbe()
        selective_scan(*moved, discretization=d, backend="reference", probe=p)
        refs[name] = p.inputs
    probe = StateProbe(references=refs, keep_states=True, want_grad=True)
    _run("compiled", inputs, disc, probe=probe)
    xs, grad_sumsq = _explicit(inputs, disc)
    torch.testing.assert_close(probe.states, xs, **TOL[torch.float64])
    torch.testing.assert_close(probe.grad_sumsq, grad_sumsq, **TOL[torch.float64])
    for name, ref in refs.items():
        xr = torch.stack(state_sequence(ref), dim=1)
        torch.testing.assert_close(probe.delta_sumsq[name], (xs - xr).square().sum(-1), **TOL[torch.float64])
        torch.testing.assert_close(probe.delta_maxabs[name], (xs - xr).abs().amax(-1), **TOL[torch.float64])


def test_threads_give_the_same_numbers(monkeypatch):
    inputs = make_scan_inputs(3, 41, 37, 9, torch.float64)
    monkeypatch.setattr(compiled, "MIN_WORK_PER_THREAD", 1)
    results = {}
    for n in ("1", "3"):
        monkeypatch.setenv(compiled.THREADS_ENV, n)
        assert compiled.threads_for(10**6) == int(n)
        results[n] = _run("compiled", inputs, "zoh")
    for name, a, b in zip(NAMES, results["1"], results["3"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13, msg=name)


def test_a_nan_input_shows_in_the_output_and_the_probe_sums():
    u, dt, A, B, C, D, dt_bias = make_scan_inputs(2, 12, 10, 5, torch.float32)
    u[1, 4, 9] = float("nan")
    probe = StateProbe()
    with torch.no_grad():
        y = selective_scan(u, dt, A, B, C, D, dt_bias, discretization="zoh", backend="compiled", probe=probe)
    assert torch.isnan(y[1, 4:, 9]).all() and torch.isfinite(y[0]).all() and torch.isfinite(y[1, :4]).all()
    assert torch.isnan(probe.state_sumsq[1, 4:, 9]).all() and torch.isnan(probe.state_maxabs[1, 4:, 9]).all()
    assert torch.isfinite(probe.state_sumsq[0]).all()


def test_half_precision_inputs_compute_in_float32():
    inputs = make_scan_inputs(2, 9, 5, 4, torch.float64)
    y64 = selective_scan(*inputs, discretization="euler", backend="reference")
    y16 = selective_scan(*(t.to(torch.bfloat16) for t in inputs), discretization="euler", backend="compiled")
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.double(), y64, rtol=0.05, atol=0.05)


def test_a_cached_library_is_reused_and_concurrent_builds_do_not_clash(tmp_path, monkeypatch):
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path))
    paths: list = []
    builders = [threading.Thread(target=lambda: paths.append(compiled.build())) for _ in range(2)]
    for t in builders:
        t.start()
    for t in builders:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # no temporary file left behind

    def no_compiler(*args, **kwargs):
        raise AssertionError("the cached library should have been reused")

    monkeypatch.setattr(compiled, "_compile", no_compiler)
    assert compiled.build() == paths[0]
    lib = compiled.Library(paths[0])
    assert lib.lanes >= 1


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """A process state in which nothing is loaded or announced yet; restored afterwards."""
    monkeypatch.setattr(dispatch, "_announced", set())
    monkeypatch.setattr(dispatch, "_BACKENDS", {})
    compiled.reset()
    yield
    compiled.reset()


def test_auto_falls_back_to_fast_with_one_log_line_without_a_compiler(tmp_path, monkeypatch, caplog,
                                                                      fresh_dispatch):
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path))  # nothing cached: a build is needed
    monkeypatch.setenv(compiled.CC_ENV, "/nonexistent/cc-for-ssmscope-tests")
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="ssmscope.ssm.scan.dispatch"):
        assert dispatch.resolve_backend("auto", cpu) == ScanBackend.FAST
        assert dispatch.resolve_backend("auto", cpu) == ScanBackend.FAST  # announced once
        inputs = make_scan_inputs(1, 5, 3, 2, torch.float64)
        y = selective_scan(*inputs, discretization="zoh", backend="auto")
    lines = [r for r in caplog.records if r.name == "ssmscope.ssm.scan.dispatch"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "→ fast" in lines[0].getMessage() and "compiled scan unavailable" in lines[0].getMessage()
    torch.testing.assert_close(y, selective_scan(*inputs, discretization="zoh", backend="reference"))
    with pytest.raises(ConfigError, match="scan=compiled is unavailable"):
        dispatch.get_backend("compiled", cpu)


def test_auto_picks_the_compiled_scan_on_cpu(caplog, fresh_dispatch):
    with caplog.at_level(logging.INFO, logger="ssmscope.ssm.scan.dispatch"):
        assert dispatch.resolve_backend("auto", torch.device("cpu")) == ScanBackend.COMPILED
    assert [r.getMessage() for r in caplog.records if r.name == "ssmscope.ssm.scan.dispatch"] == [
        "scan=auto on cpu → compiled"]
    assert dispatch.get_backend("auto", torch.device("cpu")) is compiled.scan_compiled


@pytest.mark.parametrize("lanes", [8, 16])
def test_either_lane_width_matches_reference(tmp_path, monkeypatch, fresh_dispatch, lanes):
    """The channel-block width is a build choice (16 float lanes where the CPU has AVX-512, else 8): both
    layouts give the reference's y, gradients and probe sums (odd E: a partial block; N_x = 70: two tiles)."""
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(compiled.CC_ENV, f"{' '.join(compiled.compiler())} -DLANES={lanes}")
    assert compiled.load_library().lanes == lanes
    inputs = make_scan_inputs(2, 29, 21, 70, torch.float64)
    for disc in Discretization:
        for name, r, f in zip(NAMES, _run("reference", inputs, disc), _run("compiled", inputs, disc), strict=True):
            torch.testing.assert_close(f, r, **TOL[torch.float64], msg=f"{name} ({disc}, {lanes} lanes)")
        probes = {b: StateProbe(want_grad=True) for b in ("reference", "compiled")}
        for backend, probe in probes.items():
            _run(backend, inputs, disc, probe=probe)
        for field in ("state_sumsq", "state_maxabs", "grad_sumsq"):
            assert getattr(probes["compiled"], field) is not None, field
            torch.testing.assert_close(getattr(probes["compiled"], field), getattr(probes["reference"], field),
                                       **TOL[torch.float64], msg=f"{field} ({disc}, {lanes} lanes)")
