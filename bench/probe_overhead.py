"""Probe overhead per training step: the same model and batch with and without the Observer.

Runs both variants side by side in one process (interleaved, median of repeats) and prints
the ratio. A logged step costs: the scan's extra reference recurrences (Δx vs init and vs
the previous step), the reductions, and the gradient hooks.

    python bench/probe_overhead.py [--width 128] [--steps 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ssmscope.probes import Observer
from ssmscope.runs.sweeps import corpus as data
from ssmscope.ssm import MambaConfig, MambaLM, apply_preset, build_optimizer, load_preset


def _step(model, opt, ids) -> None:
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(width: int, steps: int, batch: int, seq_len: int, probed: bool) -> float:
    """Seconds per training step, probing every step when `probed`."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=width // 2, d_state=width, n_layers=3)
    model = MambaLM(cfg)
    opt = build_optimizer(apply_preset(model, cfg, load_preset("mup-ssm"), "adam", 1e-2), "adam")
    ids = data.batch("pydoc", "train", batch, seq_len, 0)
    with Observer(model) as obs:
        _step(model, opt, ids)  # warm-up
        t0 = time.perf_counter()
        for step in range(steps):
            if probed:
                obs.arm(step)
            _step(model, opt, ids)
            if probed:
                obs.collect()
        return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N_u = N_x = width, 3 layers, "
          f"batch {args.batch} × {args.seq_len}")
    print(f"{'width':>6} {'plain ms/step':>14} {'probed ms/step':>15} {'ratio':>6}")
    for width in args.widths:
        plain, probed = [], []
        for _ in range(args.repeats):
            plain.append(measure(width, args.steps, args.batch, args.seq_len, False))
            probed.append(measure(width, args.steps, args.batch, args.seq_len, True))
        p, q = statistics.median(plain), statistics.median(probed)
        print(f"{width:>6} {p * 1e3:>14.1f} {q * 1e3:>15.1f} {q / p:>6.2f}")


if __name__ == "__main__":
    main()
