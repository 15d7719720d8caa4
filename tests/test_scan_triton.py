"""The Triton scan against the float64 reference loop: outputs, gradients, probe statistics.

Without a CUDA device the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set
below before ssm.scan.triton is imported), at small sizes with small tiles and channel blocks
so that every code path (several time tiles, a partial last tile, several channel blocks, padded
channels and modes) is exercised. With a CUDA device the same tests run compiled, plus the
`gpu`-marked full sizes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # read when @triton.jit runs, i.e. at import of ssm.scan.triton

pytest.importorskip("triton", reason="triton is not installed: the Triton scan backend cannot run")

import torch.nn.functional as F  # noqa: E402
from conftest import make_scan_inputs  # noqa: E402

from ssmscope.ssm.config import Discretization, ScanBackend  # noqa: E402
from ssmscope.ssm.scan import ScanInputs, StateProbe, get_backend, selective_scan  # noqa: E402
from ssmscope.ssm.scan import triton as st  # noqa: E402
from ssmscope.ssm.scan.reference import state_sequence  # noqa: E402

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="full sizes need a CUDA device")]
# (B, L, ED, N): odd lengths; L = 33 spans 5 tiles of 8 with a partial last one; ED = 6 with
# 4-channel blocks gives a partial second block; N = 5 pads to 8 modes
SMALL = [(2, 1, 4, 4), (2, 7, 8, 8), (2, 33, 6, 5)]
FULL = [(4, 2047, 512, 16), (2, 1023, 256, 64)]
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=6e-4, atol=2e-3),
    # bf16 inputs, fp32 state: the error is the rounding of y and of the gradients to bf16
    torch.bfloat16: dict(rtol=1e-2, atol=2e-3),
}
NAMES = ("y", "u", "dt", "A", "B", "C", "D", "dt_bias")


@pytest.fixture(autouse=True)
def small_launch(monkeypatch):
    """Under the interpreter: tiles of 8 steps, one channel block per sequence (the interpreter
    runs programs one after another); on a GPU the default launch configuration."""
    if not ON_GPU:
        monkeypatch.setattr(st, "TIME_TILE", 8)
        monkeypatch.setattr(st, "MAX_BLOCK_ELEMS", 64)


def _case(dtype, shape, full=False):
    name = f"{str(dtype).removeprefix('torch.')}-{'x'.join(map(str, shape))}"
    return pytest.param(dtype, shape, marks=GPU_ONLY if full else (), id=name)


def _inputs(shape, dtype, **kw) -> list[torch.Tensor]:
    return [t.to(DEVICE) for t in make_scan_inputs(*shape, dtype=dtype, **kw)]


def _weights(shape, dtype) -> torch.Tensor:
    """A fixed random ∂L/∂y in the output dtype (so both scans see the same rounded values)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


def _run(backend, inputs, disc, w, probe=None):
    """y and the gradients of L = Σ y ⊙ w with respect to every input."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = selective_scan(*leaves, discretization=disc, backend=backend, probe=probe)
    (y * w.to(y.dtype)).sum().backward()
    return [y.detach()] + [t.grad for t in leaves]


def _reference(inputs, disc, w, probe=None):
    return _run("reference", [t.double() for t in inputs], disc, w.double(), probe)


@pytest.mark.parametrize("disc", list(Discretization))
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [_case(dtype, s) for dtype in (torch.float32, torch.bfloat16) for s in SMALL]
    + [_case(torch.float64, SMALL[1])]
    + [_case(dtype, s, full=True) for dtype in (torch.float32, torch.bfloat16) for s in FULL],
)
def test_triton_scan_matches_reference_outputs_and_gradients(disc, dtype, shape, monkeypatch):
    if dtype == torch.float32 and not ON_GPU:  # 4-channel blocks: ED = 6 spans a full and a partial one
        monkeypatch.setattr(st, "MAX_BLOCK_ELEMS", 32)
    inputs = _inputs(shape, dtype)
    w = _weights(shape[:3], dtype)
    ref = _reference(inputs, disc, w)
    tri = _run("triton", inputs, disc, w)
    for name, r, t in zip(NAMES, ref, tri, strict=True):
        assert t.dtype == dtype, f"{name}: {t.dtype}"
        torch.testing.assert_close(t.double(), r, **TOL[dtype], msg=lambda m, n=name: f"{n} ({disc}): {m}")


def test_triton_scan_with_atomic_accumulation_of_B_and_C_gradients_matches_reference(monkeypatch):
    monkeypatch.setattr(st, "DETERMINISTIC", False)
    if not ON_GPU:  # several channel blocks add into the same ∂L/∂B_t, ∂L/∂C_t
        monkeypatch.setattr(st, "MAX_BLOCK_ELEMS", 32)
    shape = (2, 17, 6, 5) if not ON_GPU else FULL[0]
    inputs = _inputs(shape, torch.float32)
    w = _weights(shape[:3], torch.float32)
    ref = _reference(inputs, "zoh", w)
    tri = _run("triton", inputs, "zoh", w)
    for name, r, t in zip(NAMES, ref, tri, strict=True):
        torch.testing.assert_close(t.double(), r, **TOL[torch.float32], msg=lambda m, n=name: f"{n}: {m}")


def test_triton_scan_is_stable_when_modes_decay_within_one_step():
    """N = 128 modes with Δ up to ~2: Ā = exp(ΔA) underflows to 0 in fp32; backward must not
    divide by it (it reads x_{t−1} from recomputed states instead)."""
    inputs = _inputs((1, 16, 2, 128), torch.float32, dt_shift=0.5)
    w = _weights((1, 16, 2), torch.float32)
    ref = _reference(inputs, "zoh", w)
    tri = _run("triton", inputs, "zoh", w)
    for name, r, t in zip(NAMES, ref, tri, strict=True):
        assert torch.isfinite(t).all(), name
        torch.testing.assert_close(t.double(), r, **TOL[torch.float32], msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("disc", list(Discretization))
def test_triton_scan_passes_gradcheck_in_float64(disc):
    inputs = [t.requires_grad_() for t in _inputs((1, 9, 2, 3), torch.float64)]

    def f(*args):
        return selective_scan(*args, discretization=disc, backend="triton")

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def _adjoint(inputs: ScanInputs, w: torch.Tensor) -> torch.Tensor:
    """∂L/∂x_t (total derivative) for L = Σ y ⊙ w, by a reverse loop: (B, L, ED, N)."""
    _, delta, A, _, C, _ = inputs
    a = torch.exp(delta[..., None] * A)
    g, adj = 0, []
    for t in reversed(range(delta.shape[1])):
        g = w[:, t, :, None] * C[:, t, None, :] + (a[:, t + 1] * g if t + 1 < delta.shape[1] else 0)
        adj.append(g)
    return torch.stack(adj[::-1], dim=1)


@pytest.mark.parametrize("disc", list(Discretization))
@pytest.mark.parametrize(
    "shape", [pytest.param((2, 19, 6, 5), id="2x19x6x5"), pytest.param(FULL[-1], marks=GPU_ONLY, id="full")]
)
def test_triton_probes_equal_statistics_of_explicit_states(disc, shape):
    inputs = _inputs(shape, torch.float32)
    u, dt, A, B, C, _, dt_bias = (t.double() for t in inputs)
    delta = F.softplus(dt + dt_bias)
    other = Discretization.EULER if disc == Discretization.ZOH else Discretization.ZOH
    refs = {  # the first rides along in the main pass, the second gets its own pass
        "moved_B": ScanInputs(u, delta, A, B + 0.1, C, disc),
        "other_rule": ScanInputs(0.5 * u, 1.1 * delta, 0.9 * A, B, C, other),
    }
    probe = StateProbe(references=refs, keep_states=True, want_grad=True)
    w = _weights(shape[:3], torch.float32)
    _run("triton", inputs, disc, w, probe)

    own = ScanInputs(u, delta, A, B, C, disc)
    xs = torch.stack(state_sequence(own), dim=1)  # (B, L, ED, N)
    tol = TOL[torch.float32]
    for got, want in zip(probe.inputs[:5], own[:5], strict=True):
        torch.testing.assert_close(got.double(), want, **tol)
    assert probe.inputs.discretization == disc
    torch.testing.assert_close(probe.states.double(), xs, **tol)
    torch.testing.assert_close(probe.state_sumsq.double(), xs.square().sum(-1), **tol)
    torch.testing.assert_close(probe.state_maxabs.double(), xs.abs().amax(-1), **tol)
    for name, ref in refs.items():
        diff = xs - torch.stack(state_sequence(ref), dim=1)
        assert diff.abs().amax() > 1e-3  # a real difference, not rounding
        torch.testing.assert_close(probe.delta_sumsq[name].double(), diff.square().sum(-1), **tol)
        torch.testing.assert_close(probe.delta_maxabs[name].double(), diff.abs().amax(-1), **tol)
    adj = _adjoint(own, w.double())
    torch.testing.assert_close(probe.grad_sumsq.double(), adj.square().sum(-1), **tol)


def test_triton_probe_reference_of_its_own_inputs_gives_zero_delta():
    inputs = _inputs((2, 9, 6, 5), torch.float32)
    first = StateProbe()
    selective_scan(*inputs, discretization="zoh", backend="triton", probe=first)
    assert first.grad_sumsq is None and first.states is None
    again = StateProbe(references={"self": first.inputs, "self2": first.inputs})
    selective_scan(*inputs, discretization="zoh", backend="triton", probe=again)
    for name in ("self", "self2"):  # same inputs, same instructions: bitwise equal states
        assert torch.equal(again.delta_sumsq[name], torch.zeros_like(again.delta_sumsq[name]))
    assert torch.equal(again.state_sumsq, first.state_sumsq)


def test_selective_scan_dispatches_to_triton_backend():
    assert get_backend("triton", DEVICE) is st.scan_triton
    inputs = _inputs((1, 5, 4, 4), torch.float32)
    y = selective_scan(*inputs, discretization="euler", backend="triton")
    torch.testing.assert_close(y, st.scan_triton(*inputs, Discretization.EULER), rtol=0, atol=0)


@pytest.mark.skipif(ON_GPU, reason="checks the message for CPU tensors without the interpreter")
def test_triton_scan_on_cpu_tensors_without_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='fast'"):
        st.scan_triton(*_inputs((1, 3, 2, 2), torch.float32), Discretization.ZOH)


def test_triton_scan_rejects_mismatched_shapes():
    u, dt, A, B, C, D, dt_bias = _inputs((1, 3, 4, 2), torch.float32)
    with pytest.raises(ValueError, match="B has shape"):
        st.scan_triton(u, dt, A, B[:, :2], C, D, dt_bias, Discretization.ZOH)


COMPILE_CHECK = """
import sys
import triton, triton.language as tl
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    print(exc)
    sys.exit(3)
import ssmscope.ssm.scan.triton as st

def compile_kernel(fn, consts, ptr="*fp32"):
    sig = {a: "constexpr" if a in consts else (ptr if a.endswith("_ptr") else "i32") for a in fn.arg_names}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

common = dict(CDT=tl.float32, F64=False, BLOCK_ED=32, N_PAD=16, TT=8, ZOH=True)
compile_kernel(st._scan_fwd_kernel, dict(common, WRITE_Y=True, SAVE_CKPT=True, WRITE_DELTA=True, STATS=True,
                                         KEEP_STATES=True, HAS_REF=True, REF_ZOH=False), ptr="*bf16")
compile_kernel(st._scan_bwd_kernel, dict(common, WANT_GRAD=True, ATOMIC_BC=False))
print("compiled")
"""


@pytest.mark.skipif(ON_GPU, reason="on a GPU the kernels are compiled by the other tests")
def test_triton_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter accepts code the compiler rejects (and vice versa): build the forward kernel
    with every fused option and the backward kernel to sm_90 machine code with triton's bundled
    ptxas; no device needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(COMPILE_CHECK)], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(f"this triton has no ahead-of-time compile API: {proc.stdout.strip()}")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


# --- scan=auto verifies the Triton scan before using it ------------------------------------------------
@pytest.fixture
def gpu_path_here(monkeypatch):
    """resolve_backend's CUDA path on this test's device (the CPU under the interpreter when there is no GPU), in a
    process state where nothing is checked, loaded or announced yet."""
    from ssmscope.ssm.scan import dispatch

    monkeypatch.setattr(dispatch, "GPU_TYPES", ("cuda", DEVICE.type))
    monkeypatch.setattr(dispatch, "_announced", set())
    monkeypatch.setattr(dispatch, "_triton_checks", {})
    monkeypatch.setattr(dispatch, "_BACKENDS", {})
    return dispatch


def _dispatch_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ssmscope.ssm.scan.dispatch"]


def test_the_check_finds_the_triton_scan_equal_to_fast_in_outputs_gradients_and_probes():
    from ssmscope.ssm.scan import verify

    assert verify.triton_problem(DEVICE) is None
    got = verify._outputs(st.scan_triton, verify.verify_inputs(DEVICE), Discretization.ZOH,
                          torch.ones(verify.VERIFY_SHAPE[:3], device=DEVICE))
    assert {k for k, v in got.items() if v is None} == set(), "every compared tensor is filled"
    assert len(got) == 1 + 7 + 5  # y, seven gradients, five probe statistics


def test_auto_checks_the_triton_scan_once_per_process_and_uses_it(gpu_path_here, monkeypatch, caplog):
    from ssmscope.ssm.scan import verify

    calls = []
    real = verify.triton_problem
    monkeypatch.setattr(verify, "triton_problem", lambda device: calls.append(device) or real(device))
    with caplog.at_level(logging.INFO, logger="ssmscope.ssm.scan.dispatch"):
        assert gpu_path_here.resolve_backend("auto", DEVICE) == ScanBackend.TRITON
        assert gpu_path_here.resolve_backend("auto", DEVICE) == ScanBackend.TRITON
        assert gpu_path_here.get_backend("auto", DEVICE) is st.scan_triton
    assert len(calls) == 1
    assert [r.getMessage() for r in _dispatch_lines(caplog)] == [f"scan=auto on {DEVICE.type} → triton"]


def _raises(real):
    def scan(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")
    return scan


def _perturbed_y(real):
    return lambda *args: real(*args) * 1.01


def _perturbed_gradients(real):
    def scan(*args):
        y = real(*args)
        return y + 0.05 * (y - y.detach())  # the same y; every gradient 5 % larger
    return scan


def _perturbed_probe(real):
    def scan(*args):
        y = real(*args)
        args[-1].state_sumsq.mul_(1.1)
        return y
    return scan


@pytest.mark.parametrize(("fault", "reason"), [
    (_raises, r"RuntimeError: CUDA error: an illegal memory access was encountered\)$"),
    (_perturbed_y, r"zoh: y differs by 0\.01 of its largest value \(tolerance 0\.001\)"),
    (_perturbed_gradients, r"zoh: grad u differs by 0\.05"),
    (_perturbed_probe, r"zoh: state_sumsq differs by 0\.1"),
], ids=["raises", "output", "gradients", "probes"])
def test_auto_falls_back_to_fast_with_one_warning_when_triton_fails_its_check(gpu_path_here, monkeypatch, caplog,
                                                                              fault, reason):
    import re

    monkeypatch.setattr(st, "scan_triton", fault(st.scan_triton))
    inputs = _inputs((1, 5, 4, 4), torch.float32)
    with caplog.at_level(logging.INFO, logger="ssmscope.ssm.scan.dispatch"):
        assert gpu_path_here.resolve_backend("auto", DEVICE) == ScanBackend.FAST
        assert gpu_path_here.resolve_backend("auto", DEVICE) == ScanBackend.FAST
        y = selective_scan(*inputs, discretization="zoh", backend="auto")
    lines = _dispatch_lines(caplog)
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert message.startswith(f"scan=auto on {DEVICE.type} → fast: the Triton scan disagrees with the fast scan")
    assert "\n" not in message and re.search(reason, message), message
    torch.testing.assert_close(y, selective_scan(*inputs, discretization="zoh", backend="fast"), rtol=0, atol=0)
