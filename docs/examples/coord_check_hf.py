"""Coordinate-check a Hugging Face transformers Mamba under sp and mup-ssm at three widths.

    pip install -e ".[hf]"              # transformers, beside ssmscope
    python docs/examples/coord_check_hf.py                       # ~1-2 min on a laptop CPU
    python docs/examples/coord_check_hf.py --widths 16 32 64 --steps 2 --layers 1 --seq-len 16   # seconds
    python docs/examples/coord_check_hf.py --db ssmscope-data/ssmscope.duckdb        # then: ssmscope app

What happens: `HFMamba` builds transformers' MambaForCausalLM at each width (hidden_size = N_u/2,
state_size = N_x, time_step_rank = ceil(hidden_size/16)); `coord_check` puts each model under a
preset with the transformers adapter (the model's own init at the base width 32 is the base; x_proj's
dt, B and C rows get their own init scale and learning rate), trains it with Adam on one fixed batch
of Python's documentation text, and records x, y, Δx, Δy from ssmscope's recomputation of each
mixer's scan (checked against the mixer's own output). The slope table is the width exponent of each
norm, with its prediction; `--html` writes the dashboard's figure, `--db` saves the runs where
`ssmscope slopes` and `ssmscope app` read them.
"""

from __future__ import annotations

import argparse
import sys

import polars as pl

import ssmscope
from ssmscope.runs.sweeps import corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128], help="N_u = N_x per model")
    parser.add_argument("--steps", type=int, default=10, help="Adam steps on the fixed batch")
    parser.add_argument("--layers", type=int, default=2, help="Mamba blocks")
    parser.add_argument("--lr", type=float, default=1e-2, help="base learning rate (at width 32)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--batch", type=int, default=8, help="sequences in the fixed batch")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens (bytes) per sequence")
    parser.add_argument("--html", help="write the coordinate-check figure to this HTML file")
    parser.add_argument("--db", help="also save the runs into this ssmscope store")
    args = parser.parse_args(argv)

    model = ssmscope.HFMamba({"num_hidden_layers": args.layers, "vocab_size": 256})  # bytes as tokens
    batch = corpus.batch("pydoc", "train", batch_size=args.batch, seq_len=args.seq_len, seed=0)  # ids (B, L + 1)
    grid = ssmscope.Grid(presets=["sp", "mup-ssm"], optimizer="adam", lrs=args.lr, seeds=args.seeds)
    frame, runs = ssmscope.coord_check(model, args.widths, batch, grid, ssmscope.Training(steps=args.steps),
                                       name="hf-coord-check", task="pydoc", progress=True, return_runs=True)

    slopes = ssmscope.fit_slopes(frame, step="last", layers="mean", n_boot=200 if len(args.seeds) > 1 else 0)
    table = (slopes.filter((pl.col("group") == "") & pl.col("site").is_in(["x", "y"])
                           & pl.col("quantity").is_in(["value", "delta_init"]))
             .select("preset", "site", "quantity", "estimate", "ci_low", "ci_high", "predicted", "verdict", "agreement")
             .sort("preset", "site", "quantity"))
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=140):
        print(f"\nwidth exponents of transformers' Mamba, step {args.steps}, mean over {args.layers} layer(s) "
              "(RMS norms; 'predicted' is ssmscope's theory for the preset):")
        print(table)
    if args.html:
        ssmscope.coord_figure(frame, title="transformers Mamba: sp vs mup-ssm").write_html(args.html)
        print(f"figure: {args.html}")
    if args.db:
        report = ssmscope.store.save(frame, args.db, runs=runs)  # with the runs' configs, timings and losses
        print(f"saved {len(report.loaded) + len(report.replaced)} run(s) into {args.db}: `ssmscope app --db {args.db}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
