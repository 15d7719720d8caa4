"""Dashboard render time on a store with about a million probe rows.

Builds a synthetic store shaped like `paper-figure` run long (joint widths 32…512 × sp/mup/mup-ssm ×
zoh/euler × 3 seeds = 90 runs, every step 0…120 logged, 3 layers, every probe site and per-parameter
group rows), written as per-run shards in the runs.store.shards layout and loaded with runs.store.ingest.
Then it times the coordinate-check page in its default view (6 panels × 4 rows x, C·x, Δx, Δ(C·x), one y range
per row, predicted slope lines):
  - its data + figure path called directly (app.data cached reads, app.frames, app.figures), cold
    (empty caches) and warm (a second selection: another norm convention at another step);
  - a fresh tab (a new session) under Streamlit's AppTest: the app's first page, then the coordinate check, with
    cold and with warm caches (includes serialising the figure); its first render is both runs together.

    python bench/app_render.py [--out DIR] [--steps 121]

Last run (2026-12-04, 2 shared CPU cores, load average ~5; docs/dashboard.md "Speed"): a fresh tab's first render
of the coordinate check 2.42 s with cold caches (the page's own run 1.61 s), 1.01 s warm (0.80 s), 0.41 s for a view
already cached; data + figure 1.41 s cold, 0.73 s warm.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssmscope.runs.store.db import counts, ingest
from ssmscope.runs.store.schema import LOSS_COLUMNS, PROBE_TABLE_COLUMNS, RUN_COLUMNS
from ssmscope.runs.store.shards import arrow_schema

WIDTHS = (32, 64, 128, 256, 512)
PRESETS = ("sp", "mup", "mup-ssm")
DISCS = ("zoh", "euler")
SEEDS = (0, 1, 2)
LAYERS = 3
TOTAL_CELLS = [(s, q) for s in ("x", "y", "cx", "block_out") for q in ("value", "delta_init", "delta_prev")] + [
    ("grad_y", "value"), ("grad_x", "value")]
PARAM_GROUPS = [f"{role}:layers.{i}.mixer.{role}" for role in ("A_log", "D", "in_proj", "out_proj", "x_proj_B",
                                                                "x_proj_C", "x_proj_dt", "dt_proj_weight")
                for i in range(LAYERS)]


def write_run(root: Path, run_id: str, preset: str, disc: str, width: int, seed: int, steps: int,
              rng: np.random.Generator) -> int:
    """One run's shard (runs.parquet, probes.parquet, losses.parquet); returns its probe row count."""
    shard = root / run_id
    shard.mkdir(parents=True)
    run = {c: None for c in RUN_COLUMNS} | {
        "run_id": run_id, "spec": "bench-1m", "status": "completed", "last_finite_step": steps - 1, "error": "",
        "preset": preset, "discretization": disc, "optimizer": "adam", "lr": 0.01, "seed": seed, "n_u": width,
        "n_x": width, "d_model": width // 2, "n_layers": LAYERS, "steps": steps - 1, "batch": 8, "seq_len": 64,
        "task": "pydoc", "fixed_batch": True, "dt_min": 1e-3, "dt_max": 0.1, "config_json": "{}",
        "finished_at": "2026-01-01T00:00:00", "wall_s": 1.0, "schema_version": 1}
    pq.write_table(pa.Table.from_pylist([run], schema=arrow_schema(RUN_COLUMNS)), shard / "runs.parquet")
    cells = [(layer, s, q, "") for layer in range(LAYERS) for s, q in TOTAL_CELLS]
    cells += [(-1, "param", q, g) for g in PARAM_GROUPS for q in ("value", "delta_init")]
    n_cells = len(cells)
    step = np.repeat(np.arange(steps), n_cells)
    layer, site, quantity, group = (np.tile(np.array([c[i] for c in cells]), steps) for i in range(4))
    slope = {"sp": 0.5, "mup": -0.5, "mup-ssm": 0.0}[preset]
    rms = 2.0 ** (slope * np.log2(width) + rng.normal(0, 0.1, len(step)))
    count = np.full(len(step), 8 * 64 * width, np.int64)
    probes = {"run_id": np.full(len(step), run_id), "step": step, "layer": layer.astype(np.int32), "site": site,
              "quantity": quantity, "group": group, "sumsq": rms**2 * count, "count": count, "maxabs": 4 * rms,
              "token_norm_sum": 512 * rms * np.sqrt(width), "n_tokens": np.full(len(step), 512, np.int64),
              "channel_norm_sum": count * rms, "n_channels": count}
    pq.write_table(pa.table(probes, schema=arrow_schema(PROBE_TABLE_COLUMNS)), shard / "probes.parquet")
    losses = {"run_id": [run_id] * steps, "step": list(range(steps)), "train_loss": list(5 - np.arange(steps) / steps),
              "eval_loss": [None] * steps, "lr": [0.01] * steps}
    pq.write_table(pa.table(losses, schema=arrow_schema(LOSS_COLUMNS)), shard / "losses.parquet")
    return len(step)


def build(out: Path, steps: int) -> Path:
    """The synthetic store under `out` (reused when it exists)."""
    db = out / "ssmscope.duckdb"
    if db.exists():
        return db
    rng = np.random.default_rng(0)
    shards, n = out / "shards", 0
    for p in PRESETS:
        for d in DISCS:
            for w in WIDTHS:
                for s in SEEDS:
                    n += write_run(shards, f"{p}-{d}-{w}-{s}", p, d, w, s, steps, rng)
    ingest(db, shards)
    return db


def page_path(db: Path, convention: str, step: int) -> dict[str, float]:
    """The coordinate-check page's data + figure path, timed by phase (seconds)."""
    import polars as pl
    import streamlit as st

    from ssmscope.app import data, figures
    from ssmscope.app.frames import (
        DEFAULT_ROWS,
        ROW_BY_KEY,
        WidthAxis,
        coord_points,
        flagged_points,
        panel_slopes,
        seed_bands,
    )

    st.session_state[data.DB_STATE_KEY] = str(db)
    t = {}
    t0 = time.perf_counter()
    store = data.current_store()
    runs = data.runs_frame(store)
    frame = data.probe_frame(store, "bench-1m")
    t["read"] = time.perf_counter() - t0
    sel = data.where(optimizer="adam", lr=0.01, preset=list(PRESETS), discretization=list(DISCS))
    frame = data.apply(frame, sel)
    rows = [ROW_BY_KEY[k] for k in DEFAULT_ROWS]  # the page's default rows
    axis = WidthAxis("joint", None, WIDTHS)
    panel_by = ["preset", "discretization"]
    t1 = time.perf_counter()
    points = coord_points(frame, convention=convention, step=step, axis=axis, panel_by=panel_by, rows=rows)
    bands = seed_bands(points)
    flags = flagged_points(runs.filter(pl.col("spec") == "bench-1m"), points, axis=axis, panel_by=panel_by, step=step)
    t["transform"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    fits = data.slopes(store, "bench-1m", sel, convention=convention, design="joint", step=step)
    t["fit"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    panels = [f"{p} · {d}" for p in PRESETS for d in DISCS]
    fig = figures.coord_figure(points, bands, flags, panel_slopes(fits, panel_by), rows=rows, panels=panels,
                               convention=convention, x_title=axis.scale_title, step=step, pred_lines=True,
                               y_range="row")
    fig.to_json()  # what st.plotly_chart serialises
    t["figure"] = time.perf_counter() - t3
    t["total"] = time.perf_counter() - t0
    return t


def apptest(db: Path, query: dict[str, str]) -> tuple[float, float]:
    """A fresh tab under AppTest (a new session): (seconds of the coordinate-check page's run after the app's first,
    default page; seconds of both, the tab's first render of the coordinate check)."""
    from streamlit.testing.v1 import AppTest

    os.environ["SSMSCOPE_DB"] = str(db)
    t_start = time.perf_counter()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=300).run()
    at.query_params = query
    t0 = time.perf_counter()
    at.switch_page("app_pages/coord_check.py").run()
    end = time.perf_counter()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("plotly_chart"), "the page drew no chart"
    return end - t0, end - t_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="store directory (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=121, help="logged steps per run (121 → ~1.0M probe rows)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ssmscope-bench-app-"))
    t0 = time.perf_counter()
    db = build(out, args.steps)
    n = counts(db)
    print(f"store {db}: {n['runs']} runs, {n['probes']:,} probe rows (built in {time.perf_counter() - t0:.1f} s)")

    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    for label, conv, step in (("cold", "rms", args.steps - 1), ("warm: l2, another step", "l2", args.steps // 2)):
        t = page_path(db, conv, step)
        print(f"data+figure path, {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    base = {"sweep": "bench-1m"}
    for label, query in (("cold caches", base), ("warm caches, convention l2", base | {"convention": "l2"}),
                         ("warm caches, same view", base)):
        page, tab = apptest(db, query)
        print(f"AppTest fresh tab, {label}: coordinate-check page run {page:.2f} s; first render with the app's "
              f"start {tab:.2f} s")


if __name__ == "__main__":
    main()
