"""Probe overhead per training step: the same model and batch with and without the Observer.

Runs both variants side by side in one process (interleaved, median of repeats) and prints
the ratio. A logged step costs: the scan's extra reference recurrence (Δx vs init, in the same
pass over the state with the compiled scan), the probe sums, the Observer's reductions (read
with one synchronisation per logged step), the gradient hooks and the parameter norms.

    python bench/probe_overhead.py [--widths 64 256] [--steps 6] [--repeats 3] [--threads 1] [--clock cpu]

`--clock cpu` times with the process's CPU time instead of wall time: on a machine shared with
other jobs, wall time also counts the time the scheduler gives to others (and, with several torch
threads, each op's wait for a descheduled thread), CPU time only this process's own work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from ssmscope.probes import Observer
from ssmscope.runs.sweeps import corpus as data
from ssmscope.ssm import MambaConfig, MambaLM, apply_preset, build_optimizer, load_preset
from ssmscope.ssm.scan import resolve_backend


def _step(model, opt, ids) -> None:
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(width: int, steps: int, batch: int, seq_len: int, probed: bool, clock=time.perf_counter) -> float:
    """Seconds per training step, probing every step when `probed`."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=width // 2, d_state=width, n_layers=3)
    model = MambaLM(cfg)
    opt = build_optimizer(apply_preset(model, cfg, load_preset("mup-ssm"), "adam", 1e-2), "adam")
    ids = data.batch("pydoc", "train", batch, seq_len, 0)
    with Observer(model) as obs:
        _step(model, opt, ids)  # warm-up
        if probed:  # the first armed step records the init references; time the steps after it
            obs.arm(0)
            _step(model, opt, ids)
            obs.collect()
        t0 = clock()
        for step in range(1, steps + 1):
            if probed:
                obs.arm(step)
            _step(model, opt, ids)
            if probed:
                obs.collect()
        return (clock() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or process CPU time")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N_u = N_x = width, 3 layers, "
          f"batch {args.batch} × {args.seq_len}; scan {MambaConfig().scan} → "
          f"{resolve_backend(MambaConfig().scan, torch.device('cpu'))}; {args.clock} clock; load {load}")
    print(f"{'width':>6} {'plain ms/step':>14} {'probed ms/step':>15} {'ratio':>6}")
    for width in args.widths:
        plain, probed = [], []
        for _ in range(args.repeats):
            plain.append(measure(width, args.steps, args.batch, args.seq_len, False, clock))
            probed.append(measure(width, args.steps, args.batch, args.seq_len, True, clock))
        p, q = statistics.median(plain), statistics.median(probed)
        print(f"{width:>6} {p * 1e3:>14.1f} {q * 1e3:>15.1f} {q / p:>6.2f}", flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
