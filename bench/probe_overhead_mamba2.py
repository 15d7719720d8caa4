"""Probe overhead per training step of a Mamba2LM: the same model and batch with and without Mamba2Observer.

Both variants run side by side in one process (interleaved, median of repeats); the ratio is probed / plain.
A probed step costs: the state recurrence and its Δ against the init step's inputs (one batched loop over
time per layer, ssm.scan.ssd_probe), the adjoint's loop in backward, the activation and in_proj-slice sums,
the parameter norms, one synchronisation per step. 3 layers, d_state 16, headdim 16, Adam, vocab 256.

    python bench/probe_overhead_mamba2.py [--widths 128 512] [--steps 5] [--repeats 3] [--clock cpu]
                                          [--probe-backends compiled torch]

With several --probe-backends (the SSD state statistics' backend, ssm.scan.ssd_probe) each gets its own probed
column, measured in the same loop as the plain step.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import torch
import torch.nn.functional as F

import ssmscope.probes.mamba2 as observer_module
from ssmscope.probes import Mamba2Observer
from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM, init_mamba2
from ssmscope.ssm.scan.ssd_probe import BACKENDS, SSDStateProbe


def _step(model: Mamba2LM, opt: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(width: int, steps: int, batch: int, seq_len: int, probed: bool, clock=time.perf_counter,
            scan: str = "chunked", chunk_size: int = 64) -> float:
    """Seconds per training step, probing every step when `probed`."""
    cfg = Mamba2Config(d_model=width, n_layers=3, vocab_size=256, d_state=16, headdim=16, scan=scan,
                       chunk_size=chunk_size)
    model = init_mamba2(Mamba2LM(cfg), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    with Mamba2Observer(model) as obs:
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
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--scan", choices=("chunked", "reference"), default="chunked")
    ap.add_argument("--chunk-size", type=int, default=64, help="SSD chunk (default 64 = the length; the model's "
                    "default 256 would pad a 64-token batch to 256 and inflate the plain step)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or process CPU time")
    ap.add_argument("--probe-backends", nargs="+", choices=BACKENDS, default=["auto"],
                    help="the SSD probe's state-statistics backend(s), one probed column each")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Mamba-2, 3 layers, d_state 16, headdim 16, "
          f"batch {args.batch} × {args.seq_len}, scan {args.scan} (chunk {args.chunk_size}), Adam; {args.clock} clock; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    names = args.probe_backends
    print(f"{'d_model':>7} {'plain ms/step':>14}" + "".join(f" {b + ' ms':>12} {'ratio':>6}" for b in names))
    for width in args.widths:
        plain, probed = [], {b: [] for b in names}
        for _ in range(args.repeats):
            plain.append(measure(width, args.steps, args.batch, args.seq_len, False, clock, args.scan, args.chunk_size))
            for b in names:  # the observer builds its probes with this backend
                observer_module.SSDStateProbe = functools.partial(SSDStateProbe, backend=b)
                try:
                    probed[b].append(measure(width, args.steps, args.batch, args.seq_len, True, clock, args.scan,
                                             args.chunk_size))
                finally:
                    observer_module.SSDStateProbe = SSDStateProbe
        p = statistics.median(plain)
        cells = "".join(f" {statistics.median(probed[b]) * 1e3:>12.1f} {statistics.median(probed[b]) / p:>6.2f}"
                        for b in names)
        print(f"{width:>7} {p * 1e3:>14.1f}{cells}", flush=True)


if __name__ == "__main__":
    main()
