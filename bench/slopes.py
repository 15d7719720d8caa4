"""Slope fitting for a whole store: time `fit_slopes` on a synthetic probe frame of ≥ 1M rows.

The frame looks like a CPU sweep grown large: 3 presets × 2 discretizations × 2 optimizers,
widths 32..1024 (joint) or a 6 × 6 (N_u, N_x) grid, --seeds seeds, 3 layers, 8 (site, quantity)
cells, 2 groups and as many logged steps as 1M rows take. Every fit is timed in full: norms, cell
codes, OLS, the seed bootstrap with --n-boot resamples (default 1000, the library default),
predictions and verdicts. Reported: wall and process CPU time (best and median of --repeats) and
the machine's load, since a busy machine inflates wall time.

    python bench/slopes.py [--design joint|2d] [--seeds 3] [--n-boot 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import polars as pl

from ssmscope.runs.analysis.slopes import fit_slopes
from ssmscope.runs.analysis.synthetic import synthetic_frame

CELLS = (("x", "value"), ("y", "value"), ("cx", "value"), ("grad_y", "value"), ("grad_x", "value"),
         ("x", "delta_init"), ("y", "delta_init"), ("cx", "delta_init"))


def bench_frame(design: str, seeds: int, rows: int = 1_000_000) -> pl.DataFrame:
    """At least `rows` probe rows: per run, enough logged steps × 3 layers × 8 cells × 2 groups."""
    widths = (32, 64, 128, 256, 512, 1024)
    grid = dict(n_u=widths) if design == "joint" else dict(n_u=widths, n_x=(8, 16, 32, 64, 128, 256))
    n_runs = 3 * 2 * 2 * len(widths) ** (1 if design == "joint" else 2) * seeds
    n_steps = math.ceil(rows / (n_runs * 3 * len(CELLS) * 2))
    return synthetic_frame(**grid, seeds=seeds, optimizers=("sgd", "adam"), cells=CELLS, groups=("", "W_B"),
                           steps=tuple(range(0, 10 * n_steps, 10)), noise=0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", choices=["joint", "2d"], default="joint")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    frame = bench_frame(args.design, args.seeds)
    fit_slopes(frame.head(10_000), design=args.design, n_boot=args.n_boot)  # warm-up (imports, caches)
    walls, cpus = [], []
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        slopes = fit_slopes(frame, design=args.design, n_boot=args.n_boot)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    ok = (slopes["status"] == "ok").sum()
    print(f"{frame.height:,} probe rows → {slopes.height:,} slope rows ({ok:,} ok), design {args.design}, "
          f"{args.seeds} seeds, {args.n_boot} bootstrap resamples, polars {pl.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"fit_slopes wall: best {min(walls):.3f} s, median {statistics.median(walls):.3f} s; "
          f"CPU: best {min(cpus):.3f} s, median {statistics.median(cpus):.3f} s ({args.repeats} repeats)")


if __name__ == "__main__":
    main()
