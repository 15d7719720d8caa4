"""The check `scan=auto` runs before it trusts the Triton scan: one small scan against the torch `fast` scan.

The Triton kernels are tested against the reference under Triton's interpreter and compiled for sm_90
ahead of time, but a GPU, a driver or a Triton version they never ran on can still miscompile them. So
on CUDA, AUTO picks triton only after `triton_problem` found it equal to the `fast` scan (the torch
scan, exact to float rounding) on a small input, once per process, for both discretisations:
  * the output y,
  * the gradients of L = Σ y ⊙ w with respect to all seven inputs (u, dt, A, B, C, D, dt_bias),
  * the fused state-norm probes: Σ_n x², max_n |x|, Σ_n (x − x_ref)² and max_n |x − x_ref| against a
    recomputed reference, and the adjoint's Σ_n (∂L/∂x)².
A tensor agrees when max |triton − fast| ≤ VERIFY_RTOL · max |fast| (both in float32; a correct kernel
differs by float rounding, ~1e-6 relative here, while a wrong index or a missed tile is off by O(1)).
Anything else, or an exception, is the reason AUTO falls back to `fast` (ssm.scan.dispatch says it in
one warning line). The check is a plain function of the device, so the tests run it on the CPU under
Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmscope.ssm.config import Discretization
from ssmscope.ssm.scan.types import ScanFn, ScanInputs, StateProbe

VERIFY_SHAPE = (2, 19, 6, 5)
"""(batch, length, ED, N): several time tiles with a partial last one, padded channels and modes; fast to run."""
VERIFY_RTOL = 1e-3
"""Largest allowed |triton − fast|, relative to the largest |fast| of the same tensor."""
INPUT_NAMES = ("u", "dt", "A", "B", "C", "D", "dt_bias")


def verify_inputs(device: torch.device, shape: tuple[int, int, int, int] = VERIFY_SHAPE) -> list[Tensor]:
    """Deterministic float32 scan inputs with Mamba-like magnitudes: (u, dt, A, B, C, D, dt_bias) on `device`."""
    batch, length, ed, n = shape
    g = torch.Generator().manual_seed(0)

    def r(*size: int) -> Tensor:
        return torch.randn(*size, generator=g, dtype=torch.float32)

    A = -(torch.arange(1, n + 1, dtype=torch.float32).repeat(ed, 1) * torch.exp(0.1 * r(ed, n)))
    inputs = [r(batch, length, ed), 0.5 * r(batch, length, ed), A, r(batch, length, n), r(batch, length, n), r(ed),
              0.3 * r(ed) - 2.0]
    return [t.to(device) for t in inputs]


def _outputs(fn: ScanFn, inputs: list[Tensor], disc: Discretization, w: Tensor) -> dict[str, Tensor | None]:
    """y, every input's gradient of Σ y ⊙ w, and the probes of one call of `fn` with a reference and want_grad."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    u, dt, A, B, C, _, bias = (t.detach() for t in inputs)
    reference = ScanInputs(u, F.softplus(dt + bias), A, B + 0.1, C, disc)
    probe = StateProbe(references={"moved_B": reference}, want_grad=True)
    y = fn(*leaves, disc, probe)
    (y * w).sum().backward()
    return {"y": y.detach(), **{f"grad {name}": t.grad for name, t in zip(INPUT_NAMES, leaves, strict=True)},
            "state_sumsq": probe.state_sumsq, "state_maxabs": probe.state_maxabs,
            "delta_sumsq": probe.delta_sumsq.get("moved_B"), "delta_maxabs": probe.delta_maxabs.get("moved_B"),
            "grad_sumsq": probe.grad_sumsq}


def compare(got: dict[str, Tensor | None], want: dict[str, Tensor | None], rtol: float = VERIFY_RTOL) -> str | None:
    """None when every tensor of `got` agrees with `want` (module docstring); else the first that does not, why."""
    for name, ref in want.items():
        out = got.get(name)
        if ref is None:
            continue
        if out is None:
            return f"{name} was not computed"
        if out.shape != ref.shape:
            return f"{name} has shape {tuple(out.shape)}, not {tuple(ref.shape)}"
        out, ref = out.detach().float(), ref.detach().float()
        if not torch.isfinite(out).all():
            return f"{name} is not finite"
        scale = max(float(ref.abs().max()), 1e-12)
        err = float((out - ref).abs().max()) / scale
        if not err <= rtol:
            return f"{name} differs by {err:.2g} of its largest value (tolerance {rtol:g})"
    return None


def scan_problem(candidate: ScanFn, trusted: ScanFn, device: torch.device, rtol: float = VERIFY_RTOL,
                 shape: tuple[int, int, int, int] = VERIFY_SHAPE) -> str | None:
    """None when `candidate` computes what `trusted` does on a small input (y, gradients, probes; ZOH and Euler);
    else one line saying what differs, or what it raised."""
    inputs = verify_inputs(device, shape)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(shape[:3], generator=g, dtype=torch.float32).to(device)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for disc in Discretization:
                problem = compare(_outputs(candidate, inputs, disc, w), _outputs(trusted, inputs, disc, w), rtol)
                if problem is not None:
                    return f"{disc}: {problem}"
    except Exception as exc:  # any failure of the candidate is a reason not to use it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return None


def triton_problem(device: torch.device) -> str | None:
    """None when the Triton scan agrees with the fast scan on `device` (see scan_problem); else why not."""
    from ssmscope.ssm.scan import fast
    from ssmscope.ssm.scan import triton as tri

    return scan_problem(lambda *a: tri.scan_triton(*a), lambda *a: fast.scan_fast(*a), device)
