"""The DuckDB store: where it is, how it is opened and filled, and the read-side frames for analyses.

DuckDB allows one writing process per file, so workers never open it: they write Parquet shards
(runs.store.shards) into the store's own shard folder (runs.store.layout), and ingest
(runs.store.ingest: during and at the end of a sweep, or `ssmscope ingest`) loads them, one short
transaction per shard. Opening, locks and errors live in runs.store.connection and
runs.store.errors; this module gathers them for callers (the CLI, the dashboard) and keeps the
loaders. The DB path defaults to ./ssmscope-data/ssmscope.duckdb (env SSMSCOPE_DB).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from ssmscope.runs.store import queries
from ssmscope.runs.store.connection import (
    DEFAULT_DB,
    WaitFn,
    check_schema,
    check_writable,
    connect,
    default_db_path,
)
from ssmscope.runs.store.errors import StoreError, StoreLocked
from ssmscope.runs.store.ingest import IngestInterrupted, IngestReport, ingest
from ssmscope.runs.store.layout import shard_dir_for
from ssmscope.runs.store.schema import FILTER_COLUMNS, FINISHED_STATUSES
from ssmscope.runs.store.shards import shard_status
from ssmscope.ssm.errors import ConfigError

__all__ = ["DEFAULT_DB", "IngestInterrupted", "IngestReport", "StoreError", "StoreLocked", "check_schema",
           "check_writable", "connect", "counts", "default_db_path", "finished_run_ids", "ingest", "load_losses",
           "load_probe_frame", "load_runs", "shard_dir_for", "where_clause"]


def where_clause(filters: Mapping[str, Any] | None, alias: str = "r") -> tuple[str, list[Any]]:
    """`WHERE` over whitelisted run columns; a value may be a scalar or a list (IN)."""
    if not filters:
        return "", []
    parts, params = [], []
    for key, value in filters.items():
        if key not in FILTER_COLUMNS:
            raise ConfigError(f"filter {key!r}; allowed: {', '.join(FILTER_COLUMNS)}")
        values = list(value) if isinstance(value, list | tuple | set) else [value]
        parts.append(f"{alias}.{key} IN ({', '.join('?' for _ in values)})")
        params.extend(values)
    return "WHERE " + " AND ".join(parts), params


def _frame(db_path: Path, query: str, filters: Mapping[str, Any] | None) -> pl.DataFrame:
    where, params = where_clause(filters)
    con = connect(db_path, read_only=True)
    try:
        return con.sql(query.format(where=where), params=params).pl()
    finally:
        con.close()


def load_probe_frame(db_path: Path, filters: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Probe rows joined with their run keys (the input of runs.analysis.slopes)."""
    return _frame(db_path, queries.PROBE_FRAME, filters)


def load_runs(db_path: Path, filters: Mapping[str, Any] | None = None) -> pl.DataFrame:
    return _frame(db_path, queries.RUNS_FRAME, filters)


def load_losses(db_path: Path, filters: Mapping[str, Any] | None = None) -> pl.DataFrame:
    return _frame(db_path, queries.LOSS_FRAME, filters)


def counts(db_path: Path, *, wait_s: float = 0.0, on_wait: WaitFn | None = None) -> dict[str, int]:
    """Rows in the runs, probes and losses tables; a store another process holds is waited for up to `wait_s`."""
    con = connect(db_path, read_only=True, wait_s=wait_s, on_wait=on_wait)
    try:
        runs, probes, losses = con.execute(queries.COUNT_ROWS).fetchall()[0]
        return {"runs": runs, "probes": probes, "losses": losses}
    finally:
        con.close()


def finished_run_ids(shard_root: Path, candidates: Iterable[str]) -> set[str]:
    """Runs among `candidates` whose shard says completed or diverged (resume skips them)."""
    return {rid for rid in candidates if shard_status(shard_root, rid) in FINISHED_STATUSES}
