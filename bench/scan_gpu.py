"""GPU benchmark of the Triton selective scan (issue 6) against the other scans.

    python bench/scan_gpu.py                 # the full grid (a few minutes on an H100)
    python bench/scan_gpu.py --quick         # one size, for a smoke test
    python bench/scan_gpu.py --sweep         # also time launch configurations of the Triton scan
    python bench/scan_gpu.py --markdown out.md

Times are medians of triton.testing.do_bench (which flushes L2 between repetitions), in ms.
Columns: the Triton scan (ssm.scan.triton), the chunked torch scan (backend="fast"), the
reference loop (backend="reference", smallest size only) and mambapy's pure-PyTorch Blelloch
`pscan` (the S6 around it written as in mambapy: materialised Ā and B̄u, pscan, readout).
"fwd" runs under no_grad; "fwd+bwd" is forward plus backward of Σ y ⊙ w into every input.

Bandwidth: the bytes a fused scan must move at least (read u, dt, B, C and A, D, dt_bias,
write y; plus for backward read u, dt, B, C, ∂L/∂y and write the seven gradients), divided by
the time, against a measured device-to-device copy (torch clone of a 1 GiB tensor: read + write).
Goals (issue 6): forward >= 60% of copy bandwidth; probe overhead <= 10%; >= 10x the fast scan.
"""

from __future__ import annotations

import argparse
import datetime as dt_
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: `python bench/...`

# --- the grid (issue 6) ---
BATCH = 8
LENGTHS = (512, 2048)
WIDTHS = (1024, 4096)  # N_u = ED
STATES = (16, 64)  # N_x = N
REFERENCE_MAX_ELEMS = 8 * 512 * 1024 * 16  # B·L·ED·N up to which the reference loop is timed
GOAL_FWD_BANDWIDTH = 0.60
GOAL_PROBE_OVERHEAD = 0.10
GOAL_SPEEDUP = 10.0
DEVICE = "cuda"


@dataclass
class Row:
    size: tuple[int, int, int, int]
    times: dict[str, float | str]  # column → ms, or a note ("OOM", "—")
    fwd_bytes: int
    train_bytes: int


def _bench(fn, grad_to_none=None) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def _timed(fn, grad_to_none=None) -> float | str:
    """The median time in ms, or "OOM" (the columns that materialise (B, L, ED, N) run out first)."""
    try:
        return _bench(fn, grad_to_none)
    except torch.cuda.OutOfMemoryError:
        return "OOM"
    finally:
        torch.cuda.empty_cache()


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device clone (read + write) of a 1 GiB fp32 tensor."""
    x = torch.empty(2**28, device=DEVICE)
    ms = _bench(lambda: x.clone())
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)


def make_inputs(b: int, length: int, ed: int, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """(u, dt, A, B, C, D, dt_bias) on the GPU with Mamba-like magnitudes (Δ ≈ softplus(−4) ≈ 0.02)."""
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, device=DEVICE, generator=g)

    A = -torch.arange(1, n + 1, device=DEVICE, dtype=torch.float32).repeat(ed, 1)  # S4D-real
    tensors = [r(b, length, ed), 0.5 * r(b, length, ed), A, r(b, length, n), r(b, length, n), r(ed),
               0.3 * r(ed) - 4.0]
    return [t.to(dtype) for t in tensors]


def min_bytes(b: int, length: int, ed: int, n: int, dtype: torch.dtype) -> tuple[int, int]:
    """(forward, forward+backward) bytes a fused scan must move at least (states stay on chip)."""
    s = torch.tensor([], dtype=dtype).element_size()
    seq, bc, params = b * length * ed * s, b * length * n * s, (ed * n + 2 * ed) * s
    fwd = 2 * seq + 2 * bc + params + seq  # read u, dt, B, C, A, D, dt_bias; write y
    bwd = 3 * seq + 2 * bc + params + (2 * seq + 2 * bc + params)  # read u, dt, ∂y, B, C…; write 7 grads
    return fwd, fwd + bwd


def mambapy_scan(pscan, u, dt, A, B, C, D, dt_bias, disc):
    """S6 around mambapy's pscan, as mambapy writes it: materialise Ā, B̄u (B, L, ED, N), scan, read out."""
    from ssmscope.ssm.scan import softplus_delta
    from ssmscope.ssm.scan.discretize import input_coefficient

    delta = softplus_delta(dt, dt_bias)  # (B, L, ED)
    delta_A = delta[..., None] * A  # (B, L, ED, N)
    bu = input_coefficient(delta[..., None], A, delta_A, disc) * B[:, :, None, :] * u[..., None]
    hs = pscan(torch.exp(delta_A), bu)  # (B, L, ED, N)
    return (hs @ C[..., None]).squeeze(-1) + D * u  # (B, L, ED)


def time_size(size, dtype, disc, pscan) -> Row:
    from ssmscope.ssm.scan import ScanInputs, StateProbe, selective_scan

    b, length, ed, n = size
    inputs = make_inputs(b, length, ed, n, dtype)
    w = torch.randn(b, length, ed, device=DEVICE).to(dtype)
    leaves = [t.clone().requires_grad_() for t in inputs]
    times: dict[str, float | str] = {}

    def fwd(fn, probe_factory=None):
        def run():
            with torch.no_grad():
                fn(*inputs, probe=probe_factory() if probe_factory else None)

        return _timed(run)

    def train(fn, probe_factory=None):
        def run():
            y = fn(*leaves, probe=probe_factory() if probe_factory else None)
            y.backward(w)

        return _timed(run, grad_to_none=leaves)

    def backend(name):
        return lambda *a, probe=None: selective_scan(*a, discretization=disc, backend=name, probe=probe)

    triton_scan, fast_scan = backend("triton"), backend("fast")
    times["triton fwd"] = fwd(triton_scan)
    times["triton fwd+bwd"] = train(triton_scan)
    times["fast fwd"] = fwd(fast_scan)
    times["fast fwd+bwd"] = train(fast_scan)
    if b * length * ed * n <= REFERENCE_MAX_ELEMS:
        times["reference fwd"] = fwd(backend("reference"))
        times["reference fwd+bwd"] = train(backend("reference"))
    else:
        times["reference fwd"] = times["reference fwd+bwd"] = "—"
    if pscan is not None:
        mp = lambda *a, probe=None: mambapy_scan(pscan, *a, disc)  # noqa: E731
        times["pscan fwd"] = fwd(mp)
        times["pscan fwd+bwd"] = train(mp)
    # the fused probes: state statistics, and Δx against one reference scan (as a probe step does)
    first = StateProbe()
    with torch.no_grad():
        selective_scan(*inputs, discretization=disc, backend="triton", probe=first)
    ref = ScanInputs(*(t.clone() for t in first.inputs[:5]), first.inputs.discretization)
    times["triton fwd +stats"] = fwd(triton_scan, StateProbe)
    times["triton fwd +stats+ref"] = fwd(triton_scan, lambda: StateProbe(references={"init": ref}))
    times["triton fwd+bwd +all probes"] = train(
        triton_scan, lambda: StateProbe(references={"init": ref}, want_grad=True)
    )
    fwd_bytes, train_bytes = min_bytes(b, length, ed, n, dtype)
    return Row(size, times, fwd_bytes, train_bytes)


def _fmt(v: float | str) -> str:
    return f"{v:.3f}" if isinstance(v, float) else v


def _ratio(a: float | str, b: float | str) -> float | None:
    return a / b if isinstance(a, float) and isinstance(b, float) else None


def report(rows: list[Row], copy_bw: float, has_pscan: bool) -> list[str]:
    cols = ["triton fwd", "triton fwd+bwd", "fast fwd", "fast fwd+bwd", "reference fwd", "reference fwd+bwd"]
    cols += ["pscan fwd", "pscan fwd+bwd"] if has_pscan else []
    out = ["## Times (ms, median)", "", "| B, L, N_u, N_x | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        out.append(f"| {', '.join(map(str, r.size))} | " + " | ".join(_fmt(r.times[c]) for c in cols) + " |")
    out += ["", f"## Bandwidth (copy: {copy_bw / 1e9:.0f} GB/s) and goals", "",
            "| B, L, N_u, N_x | fwd GB/s | fwd / copy | fwd+bwd GB/s | x fast fwd | x fast fwd+bwd "
            "| probe +stats | +stats+ref | fwd+bwd +probes |", "|---" * 9 + "|"]
    summary = {"fwd_bw": [], "speedup": [], "probe": []}
    for r in rows:
        t = r.times
        bw = r.fwd_bytes / (t["triton fwd"] * 1e-3) if isinstance(t["triton fwd"], float) else None
        tbw = r.train_bytes / (t["triton fwd+bwd"] * 1e-3) if isinstance(t["triton fwd+bwd"], float) else None
        sp_f, sp_t = _ratio(t["fast fwd"], t["triton fwd"]), _ratio(t["fast fwd+bwd"], t["triton fwd+bwd"])
        probes = [_ratio(t[k], t[base]) for k, base in (("triton fwd +stats", "triton fwd"),
                                                          ("triton fwd +stats+ref", "triton fwd"),
                                                          ("triton fwd+bwd +all probes", "triton fwd+bwd"))]
        summary["fwd_bw"] += [bw / copy_bw] if bw else []
        summary["speedup"] += [s for s in (sp_f, sp_t) if s]
        summary["probe"] += [p - 1 for p in probes[:2] if p]
        cells = [f"{bw / 1e9:.0f}" if bw else "—", f"{bw / copy_bw:.0%}" if bw else "—",
                 f"{tbw / 1e9:.0f}" if tbw else "—"]
        cells += [f"{sp:.1f}" if sp else "—" for sp in (sp_f, sp_t)]
        cells += [f"{p - 1:+.0%}" if p else "—" for p in probes]
        out.append(f"| {', '.join(map(str, r.size))} | " + " | ".join(cells) + " |")

    def verdict(values, goal, better):
        if not values:
            return "not measured"
        worst = min(values) if better == ">=" else max(values)
        ok = worst >= goal if better == ">=" else worst <= goal
        return f"{'MET' if ok else 'NOT MET'} (worst {worst:.2f}, median {statistics.median(values):.2f})"

    out += ["", "## Goals", "",
            f"- forward >= {GOAL_FWD_BANDWIDTH:.0%} of copy bandwidth: "
            + verdict(summary["fwd_bw"], GOAL_FWD_BANDWIDTH, ">="),
            f"- forward probe overhead <= {GOAL_PROBE_OVERHEAD:.0%}: "
            + verdict(summary["probe"], GOAL_PROBE_OVERHEAD, "<="),
            f"- >= {GOAL_SPEEDUP:.0f}x the fast torch scan (fwd and fwd+bwd): "
            + verdict(summary["speedup"], GOAL_SPEEDUP, ">=")]
    return out


def sweep(dtype, disc) -> list[str]:
    """Triton launch knobs on one mid-size problem: what to set in ssm/scan/triton.py."""
    import ssmscope.ssm.scan.triton as st
    from ssmscope.ssm.scan import selective_scan

    size = (BATCH, 2048, 4096, 16)
    inputs = make_inputs(*size, dtype)
    w = torch.randn(*size[:3], device=DEVICE).to(dtype)
    leaves = [t.clone().requires_grad_() for t in inputs]
    saved = (st.TIME_TILE, st.MAX_BLOCK_ELEMS, st.ELEMS_PER_THREAD, st.DETERMINISTIC)
    out = [f"## Launch sweep at B, L, N_u, N_x = {size} (ms)", "",
           "| TIME_TILE | MAX_BLOCK_ELEMS | ELEMS_PER_THREAD | DETERMINISTIC | fwd | fwd+bwd |",
           "|---|---|---|---|---|---|"]
    try:
        for tt in (4, 8, 16):
            for elems in (256, 512, 1024):
                for ept in (2, 4, 8):
                    for det in (True, False):
                        knobs = (tt, elems, ept, det)
                        st.TIME_TILE, st.MAX_BLOCK_ELEMS, st.ELEMS_PER_THREAD, st.DETERMINISTIC = knobs

                        def f():
                            with torch.no_grad():
                                selective_scan(*inputs, discretization=disc, backend="triton")

                        def fb():
                            selective_scan(*leaves, discretization=disc, backend="triton").backward(w)

                        t_f = _timed(f) if det else "="  # forward does not depend on DETERMINISTIC
                        out.append(f"| {tt} | {elems} | {ept} | {det} | {_fmt(t_f)} | "
                                   f"{_fmt(_timed(fb, grad_to_none=leaves))} |")
                        print(out[-1], flush=True)
    finally:
        st.TIME_TILE, st.MAX_BLOCK_ELEMS, st.ELEMS_PER_THREAD, st.DETERMINISTIC = saved
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one size (B=8, L=512, N_u=1024, N_x=16)")
    parser.add_argument("--sweep", action="store_true", help="also time Triton launch configurations")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="input dtype (the state is fp32 either way)")
    parser.add_argument("--disc", choices=("zoh", "euler"), default="zoh")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/scan_gpu.py: no CUDA device visible (torch.cuda.is_available() is False); "
              "nothing was measured. Run it on a machine with an NVIDIA GPU: python bench/scan_gpu.py",
              file=sys.stderr)
        return 2
    import triton

    from ssmscope.ssm.config import Discretization

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    disc = Discretization(args.disc)
    props = torch.cuda.get_device_properties(0)
    header = [
        "# Selective scan on the GPU (bench/scan_gpu.py)", "",
        f"- device: {props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)",
        f"- torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
        f"python {platform.python_version()}",
        f"- date: {dt_.datetime.now(dt_.UTC).isoformat(timespec='seconds')}",
        f"- inputs {args.dtype}, state fp32, {disc.value}; command: python bench/scan_gpu.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    ]
    try:
        from mambapy.pscan import pscan
    except ImportError as exc:
        pscan = None
        header.append(f"- mambapy not importable ({exc}): the pscan columns are skipped "
                      "(pip install mambapy to add them)")
    print("\n".join(header), flush=True)
    copy_bw = copy_bandwidth()
    print(f"- device-to-device copy: {copy_bw / 1e9:.0f} GB/s", flush=True)
    header.append(f"- device-to-device copy: {copy_bw / 1e9:.0f} GB/s")
    sizes = [(BATCH, 512, 1024, 16)] if args.quick else [
        (BATCH, length, ed, n) for length in LENGTHS for ed in WIDTHS for n in STATES
    ]
    rows = []
    for size in sizes:
        rows.append(time_size(size, dtype, disc, pscan))
        print(f"  {size}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rows[-1].times.items()), flush=True)
    lines = [*header, "", *report(rows, copy_bw, pscan is not None)]
    if args.sweep:
        lines += ["", *sweep(dtype, disc)]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
