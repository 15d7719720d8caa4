"""Synthetic probe frames whose norms follow known exponents: the ground truth of slope tests and benches."""

from __future__ import annotations

import numpy as np
import polars as pl

from ssmscope.runs.analysis.slopes.paper import PAPER_COLUMNS
from ssmscope.runs.analysis.slopes.verdicts import OPTIMIZER_FAMILY, predictions_frame
from ssmscope.runs.store.schema import PROBE_FRAME_COLUMNS, RunStatus


def synthetic_frame(*, n_u: tuple[int, ...] = (32, 64, 128, 256, 512), n_x: tuple[int, ...] | None = None,
                    seeds: int = 3, presets: tuple[str, ...] = ("sp", "mup", "mup-ssm"),
                    discretizations: tuple[str, ...] = ("zoh", "euler"),
                    optimizers: tuple[str, ...] = ("adam",),
                    steps: tuple[int, ...] = (0, 100), layers: int = 3,
                    cells: tuple[tuple[str, str], ...] = tuple(PAPER_COLUMNS.values()),
                    groups: tuple[str, ...] = ("",),
                    exponents: dict[tuple[str, str], tuple[float, float]] | None = None,
                    noise: float = 0.05, lr: float = 1e-3, rng_seed: int = 0) -> pl.DataFrame:
    """A probe frame (PROBE_FRAME_COLUMNS) whose RMS norms follow known exponents, for tests and benches.

    log2 rms = 1 + s_u·log2 N_u + s_x·log2 N_x + layer/4 + N(0, noise²), independently per row.
    Widths: n_x=None gives joint runs (N_x = N_u); otherwise every (N_u, N_x) pair.
    exponents: {(site, quantity): (s_u, s_x)}; None takes ssm.predictions (RMS) where they exist, else 0.
    """
    pairs = [(u, u) for u in n_u] if n_x is None else [(u, x) for u in n_u for x in n_x]
    runs = pl.DataFrame(
        [(p, d, o, u, x, s) for p in presets for d in discretizations for o in optimizers
         for u, x in pairs for s in range(seeds)],
        schema={"preset": pl.String, "discretization": pl.String, "optimizer": pl.String,
                "n_u": pl.Int64, "n_x": pl.Int64, "seed": pl.Int64}, orient="row")
    runs = runs.with_columns(
        pl.format("{}-{}-{}-u{}-x{}-s{}", *runs.columns).alias("run_id"), pl.lit(lr).alias("lr"),
        pl.lit(RunStatus.COMPLETED.value).alias("status"))
    probes = pl.DataFrame([(st, ly, si, q, g) for st in steps for ly in range(layers) for si, q in cells
                           for g in groups], orient="row",
                          schema={"step": pl.Int64, "layer": pl.Int32, "site": pl.String,
                                  "quantity": pl.String, "group": pl.String})
    frame = runs.join(probes, how="cross")
    exp = _synthetic_exponents(frame, exponents)
    rng = np.random.default_rng(rng_seed)
    log2_width = np.log2(frame.select("n_u", "n_x").to_numpy().astype(np.float64))  # (rows, 2)
    log2_rms = (1.0 + (exp * log2_width).sum(axis=1) + frame["layer"].to_numpy() / 4
                + rng.normal(0.0, noise, frame.height))
    rms = np.exp2(log2_rms)
    count = (frame["n_u"] * frame["n_x"] * 64).to_numpy()
    return frame.with_columns(
        pl.Series("sumsq", rms**2 * count), pl.Series("count", count), pl.Series("maxabs", 4 * rms),
        pl.Series("token_norm_sum", 64 * rms * np.sqrt(count / 64)), pl.lit(64, pl.Int64).alias("n_tokens"),
        pl.Series("channel_norm_sum", count * rms), pl.Series("n_channels", count),
    ).select(PROBE_FRAME_COLUMNS)


def _synthetic_exponents(frame: pl.DataFrame,
                         exponents: dict[tuple[str, str], tuple[float, float]] | None) -> np.ndarray:
    """(rows, 2) true (s_u, s_x) per row of a synthetic frame."""
    if exponents is not None:
        table = pl.DataFrame([(s, q, u, x) for (s, q), (u, x) in exponents.items()], orient="row",
                             schema={"site": pl.String, "quantity": pl.String, "e_u": pl.Float64,
                                     "e_x": pl.Float64})
        keys = ["site", "quantity"]
    else:
        table = predictions_frame().rename({"pred_n_u": "e_u", "pred_n_x": "e_x"}).select(
            "preset", "discretization", "family", "site", "quantity", "e_u", "e_x")
        frame = frame.with_columns(pl.col("optimizer").replace_strict(OPTIMIZER_FAMILY, default=None,
                                                                      return_dtype=pl.String).alias("family"))
        keys = ["preset", "discretization", "family", "site", "quantity"]
    joined = frame.select(keys).join(table, on=keys, how="left", maintain_order="left")
    return joined.select(pl.col("e_u", "e_x").fill_null(0.0)).to_numpy()
