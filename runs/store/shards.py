"""Per-run Parquet shards: how a worker hands its results to the store.

A shard is a directory `<shards>/<run_id>/` holding runs.parquet (one row), probes.parquet and
losses.parquet. It is written under a temporary name and renamed into place, so a reader
sees a whole shard or none: a run killed mid-way leaves nothing to ingest (and is redone),
never a half shard. Imports pyarrow only (the worker path).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssmscope.probes.schema import PROBE_COLUMNS

RUN_COLUMNS: dict[str, str] = {
    "run_id": "string", "spec": "string", "status": "string", "last_finite_step": "int64",
    "error": "string", "preset": "string", "discretization": "string", "optimizer": "string",
    "lr": "float64", "seed": "int64", "n_u": "int64", "n_x": "int64", "d_model": "int64",
    "n_layers": "int64", "steps": "int64", "batch": "int64", "seq_len": "int64", "task": "string",
    "fixed_batch": "bool", "dt_min": "float64", "dt_max": "float64", "config_json": "string",
    "started_at": "string", "finished_at": "string", "wall_s": "float64", "device": "string",
    "scan": "string", "torch_version": "string", "ssmscope_version": "string",
    "git_commit": "string", "hostname": "string", "schema_version": "int64",
}
LOSS_COLUMNS: dict[str, str] = {
    "step": "int64", "train_loss": "float64", "eval_loss": "float64", "lr": "float64",
}
FINISHED = ("completed", "diverged")


def _table(rows: list[dict[str, Any]], columns: dict[str, str], keys: dict[str, Any]) -> pa.Table:
    schema = pa.schema([(k, pa.string()) for k in keys] + [(c, pa.type_for_alias(t)) for c, t in columns.items()])
    data = {k: [v] * len(rows) for k, v in keys.items()}
    for c in columns:
        data[c] = [r.get(c) for r in rows]
    return pa.table(data, schema=schema)


def write_shard(shard_root: Path, run: dict[str, Any], probes: list[dict[str, Any]],
                losses: list[dict[str, Any]]) -> Path:
    """Write one run's shard atomically; replaces an older shard of the same run."""
    shard_root = Path(shard_root)
    shard_root.mkdir(parents=True, exist_ok=True)
    run_id = run["run_id"]
    tmp = shard_root / f".tmp-{run_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    pq.write_table(_table([run], RUN_COLUMNS, {}), tmp / "runs.parquet")
    pq.write_table(_table(probes, PROBE_COLUMNS, {"run_id": run_id}), tmp / "probes.parquet")
    pq.write_table(_table(losses, LOSS_COLUMNS, {"run_id": run_id}), tmp / "losses.parquet")
    final = shard_root / run_id
    if final.exists():  # a retried run: move the old shard aside, then swap in the new one
        trash = shard_root / f".old-{run_id}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def shard_status(shard_root: Path, run_id: str) -> str | None:
    """The stored status of a run's shard, or None when it has none."""
    path = Path(shard_root) / run_id / "runs.parquet"
    if not path.exists():
        return None
    return pq.read_table(path, columns=["status"]).column("status")[0].as_py()


def list_shards(shard_root: Path) -> list[Path]:
    """Complete shard directories (temporary ones excluded)."""
    root = Path(shard_root)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def clean_temporaries(shard_root: Path) -> int:
    """Remove leftovers of writers killed mid-write; returns how many."""
    root = Path(shard_root)
    n = 0
    if root.exists():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def config_json(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True)
