"""Per-run Parquet shards: how a worker hands its results to the store.

A shard is a directory `<shards>/<run_id>/` holding runs.parquet (one row), probes.parquet and
losses.parquet. It is written under a temporary name and renamed into place, so a reader
sees a whole shard or none: a run killed mid-way leaves nothing to ingest (and is redone),
never a half shard. Imports pyarrow only (the worker path).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssmscope.runs.store.schema import LOSS_COLUMNS, PROBE_TABLE_COLUMNS, RUN_COLUMNS


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    """The Arrow schema of a table of runs.store.schema."""
    return pa.schema([(c, pa.type_for_alias(t)) for c, t in columns.items()])


def _table(rows: list[dict[str, Any]], columns: dict[str, str], keys: dict[str, Any]) -> pa.Table:
    """`rows` as a table of `columns`; `keys` (e.g. the run id) fill their column on every row."""
    data = {c: [keys[c]] * len(rows) if c in keys else [r.get(c) for r in rows] for c in columns}
    return pa.table(data, schema=arrow_schema(columns))


def write_shard(shard_root: Path, run: dict[str, Any], probes: list[dict[str, Any]],
                losses: list[dict[str, Any]]) -> Path:
    """Write one run's shard atomically; replaces an older shard of the same run."""
    shard_root = Path(shard_root)
    shard_root.mkdir(parents=True, exist_ok=True)
    run_id = run["run_id"]
    tmp = shard_root / f".tmp-{run_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    pq.write_table(_table([run], RUN_COLUMNS, {}), tmp / "runs.parquet")
    pq.write_table(_table(probes, PROBE_TABLE_COLUMNS, {"run_id": run_id}), tmp / "probes.parquet")
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
