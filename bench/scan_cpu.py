"""CPU timings of the compiled and fast selective scans against the reference loop, side by side.

For B=8, N_u (ED)=256, N_x (N)=16, L in {64, 256, 1024} and both discretisations, times
  fwd      the forward pass alone, under torch.no_grad() (nothing kept for a backward), and
  fwd+bwd  the forward with autograd on plus the backward of a fixed random projection of y,
with `ssm.scan.selective_scan(..., backend="reference" | "fast" | "compiled")` on the same inputs,
and the roofline: one pass of x ← exp(ΔA)·x + B over the B·L·ED·N elements, with the compiled
library's own exp, threads and layout (ssm.scan.compiled.roofline) — the least any scan of these
shapes can cost on this machine. After one warm-up call each, the variants alternate
`--repeats` times and the median is reported, with the ratios reference / compiled,
fast / compiled and compiled / roofline (the scan's distance to the roofline; a forward does
that pass plus the readout and probe sums, a fwd+bwd about three passes: forward, the backward's
recompute of the states, the adjoint). Inputs: float32, dt = randn − 4 so that Δ = softplus(dt)
lies roughly in [1e-3, 0.1], A = −(1..N) per channel (S4D-real), B, C, u standard normal.

    python bench/scan_cpu.py [--repeats 5] [--threads 2] [--lengths 256]

The numbers are wall-clock times and move with whatever else the machine runs; the load
average at the start and at the end is printed alongside.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ssmscope.ssm.scan.compiled as scan_compiled
import ssmscope.ssm.scan.fast as scan_fast
from ssmscope.ssm.scan import selective_scan, softplus_delta

BATCH, ED, N = 8, 256, 16
LENGTHS = (64, 256, 1024)
DISCRETIZATIONS = ("zoh", "euler")
BACKENDS = ("reference", "fast", "compiled")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def make_inputs(length: int, seed: int = 0) -> list[torch.Tensor]:
    """(u, dt, A, B, C, D, dt_bias), float32."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(BATCH, length, ED, generator=g)
    dt = torch.randn(BATCH, length, ED, generator=g) - 4.0
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(ED, 1)
    B = torch.randn(BATCH, length, N, generator=g)
    C = torch.randn(BATCH, length, N, generator=g)
    D = torch.randn(ED, generator=g)
    dt_bias = torch.zeros(ED)
    return [u, dt, A, B, C, D, dt_bias]


def forward_fn(inputs: list[torch.Tensor], disc: str, backend: str) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            selective_scan(*inputs, discretization=disc, backend=backend)

    return run


def forward_backward_fn(inputs: list[torch.Tensor], disc: str, backend: str) -> Callable[[], None]:
    leaves = [t.clone().requires_grad_() for t in inputs]
    weight = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))

    def run() -> None:
        for t in leaves:
            t.grad = None
        y = selective_scan(*leaves, discretization=disc, backend=backend)
        (y * weight).sum().backward()

    return run


def roofline_fn(inputs: list[torch.Tensor]) -> Callable[[], None]:
    _, dt, A, B, _, _, dt_bias = inputs
    delta = softplus_delta(dt, dt_bias)

    def run() -> None:
        scan_compiled.roofline(delta, A, B)

    return run


def time_side_by_side(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) per backend; one warm-up call each, then the backends alternate."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per backend (median reported)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); the fast scan runs with "
                             "ssmscope.ssm.scan.fast.THREADS inside")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="sequence lengths L")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lib = scan_compiled.load_library()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_model()} "
          f"({os.cpu_count()} logical cores)")
    print(f"B={BATCH}, ED={ED}, N={N}, float32; fast scan: CHUNK={scan_fast.CHUNK}, "
          f"SAVE_BUDGET_BYTES={scan_fast.SAVE_BUDGET_BYTES / 2**20:g} MiB, THREADS={scan_fast.THREADS}; "
          f"compiled scan: {lib.path.name}, threads {scan_compiled.threads_for(BATCH * 256 * ED * N)} at L=256; "
          f"median of {args.repeats} after 1 warm-up; load average at start: {load_average()}")
    header = (f"{'L':>5}  {'disc':<5}  {'pass':<7}  {'reference ms':>12}  {'fast ms':>8}  {'compiled ms':>11}  "
              f"{'roofline ms':>11}  {'ref/comp':>8}  {'fast/comp':>9}  {'comp/roof':>9}")
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        inputs = make_inputs(length)
        for disc in DISCRETIZATIONS:
            for label, make in (("fwd", forward_fn), ("fwd+bwd", forward_backward_fn)):
                fns = {backend: make(inputs, disc, backend) for backend in BACKENDS}
                fns["roofline"] = roofline_fn(inputs)
                ms = time_side_by_side(fns, args.repeats)
                print(f"{length:>5}  {disc:<5}  {label:<7}  {ms['reference']:>12.1f}  {ms['fast']:>8.1f}  "
                      f"{ms['compiled']:>11.2f}  {ms['roofline']:>11.2f}  {ms['reference'] / ms['compiled']:>8.1f}  "
                      f"{ms['fast'] / ms['compiled']:>9.1f}  {ms['compiled'] / ms['roofline']:>9.2f}", flush=True)
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
