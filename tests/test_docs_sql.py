"""Every SQL example in docs/store.md runs against a store made by a real (tiny) sweep and answers what an
independent computation over the store's loaders (polars, not SQL) says it should."""

from __future__ import annotations

import math
import re
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from ssmscope.runs.store.db import load_losses, load_probe_frame, load_runs
from ssmscope.runs.sweeps.spec import parse_spec
from ssmscope.runs.sweeps.sweep import run_sweep

DOC = Path(__file__).parents[1] / "docs" / "store.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
SPEC = {
    "sweep": {"name": "docs"},
    "grid": {"widths": [16, 32, 64], "presets": ["sp", "mup-ssm"], "discretizations": ["zoh"],
             "optimizers": ["adam"], "lrs": [0.01], "seeds": [0]},
    "train": {"steps": 2, "batch": 2, "seq_len": 8, "n_layers": 2},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("docs") / "store.duckdb"
    run_sweep(parse_spec(SPEC, "docs"), db, device="cpu")
    return db


def _status_counts(db: Path) -> list[tuple]:
    runs = load_runs(db)
    return sorted(runs.group_by("preset", "discretization", "status").len().rows())


def _delta_y_rms(db: Path) -> list[tuple]:
    runs = load_runs(db).select("run_id", "steps", "status")
    frame = (load_probe_frame(db).join(runs, on=["run_id", "status"])
             .filter((pl.col("site") == "y") & (pl.col("quantity") == "delta_init") & (pl.col("group") == "")
                     & (pl.col("step") == pl.col("steps")) & (pl.col("status") == "completed")))
    out = (frame.group_by("preset", "discretization", "layer", "n_u")
           .agg((pl.col("sumsq") / pl.col("count")).sqrt().mean().alias("rms"), pl.len().alias("seeds")))
    return sorted(out.rows())


def _state_slope(db: Path) -> list[tuple]:
    frame = load_probe_frame(db).filter((pl.col("site") == "x") & (pl.col("quantity") == "value")
                                        & (pl.col("step") == 0) & (pl.col("n_u") == pl.col("n_x")))
    rows = []
    for (preset, disc, layer), part in frame.group_by("preset", "discretization", "layer"):
        x = np.log2(part["n_u"].to_numpy().astype(float))
        y = np.log2((part["channel_norm_sum"] / part["n_channels"]).to_numpy())
        rows.append((preset, disc, layer, float(np.polyfit(x, y, 1)[0])))
    return sorted(rows)


def _diverged(db: Path) -> list[tuple]:
    runs = load_runs(db).filter(pl.col("status") == "diverged")
    return sorted(runs.select("run_id", "preset", "discretization", "optimizer", "lr", "n_u",
                              "last_finite_step").rows())


def _mean_loss(db: Path) -> list[tuple]:
    joined = load_losses(db).join(load_runs(db).select("run_id", "preset", "n_u"), on="run_id")
    return sorted(joined.group_by("preset", "n_u", "step").agg(pl.col("train_loss").mean()).rows())


EXPECTED = [_status_counts, _delta_y_rms, _state_slope, _diverged, _mean_loss]
"""The independent answer to each SQL example of docs/store.md, in the order they appear."""


def test_every_sql_example_has_an_independent_answer():
    assert len(QUERIES) == len(EXPECTED), "docs/store.md gained or lost an SQL example: give it an answer here"


def _close(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) if isinstance(x, float) else x == y
        for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_store_doc_sql_answers_what_the_loaders_say(store, index):
    con = duckdb.connect(str(store), read_only=True)
    try:
        rows = sorted(con.execute(QUERIES[index]).fetchall())
    finally:
        con.close()
    expected = EXPECTED[index](store)
    assert len(rows) == len(expected), (QUERIES[index], rows, expected)
    assert all(_close(a, b) for a, b in zip(rows, expected, strict=True)), (QUERIES[index], rows, expected)
    if index != 3:  # nothing diverges in this sweep; every other example has rows (6 runs, 2 layers)
        assert rows
