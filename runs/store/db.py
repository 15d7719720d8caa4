"""The DuckDB store: idempotent ingest of run shards, and read-side frames for analyses.

DuckDB allows one writing process per file, so workers never open it: they write Parquet
shards (runs.store.shards) and one ingest (at the end of a sweep, or `ssmscope ingest`) loads
them. Ingest is idempotent: a shard already loaded with the same `finished_at` is skipped;
a newer one replaces the run's rows in one transaction. The DB path defaults to
./ssmscope-data/ssmscope.duckdb (env SSMSCOPE_DB), shards to `<db dir>/shards`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.parquet as pq

from ssmscope.probes.schema import SCHEMA_VERSION
from ssmscope.runs.store import queries
from ssmscope.runs.store.schema import FILTER_COLUMNS, FINISHED_STATUSES
from ssmscope.runs.store.shards import clean_temporaries, list_shards, shard_status
from ssmscope.ssm.errors import ConfigError

DEFAULT_DB = Path("ssmscope-data") / "ssmscope.duckdb"


class StoreError(ConfigError):
    """The store is missing, locked by a writer, or of another schema version."""


def default_db_path() -> Path:
    return Path(os.environ.get("SSMSCOPE_DB", DEFAULT_DB))


def shard_dir_for(db_path: Path) -> Path:
    return Path(os.environ.get("SSMSCOPE_SHARDS", Path(db_path).parent / "shards"))


def connect(db_path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the store; a locked file or a missing one becomes a StoreError with advice."""
    db_path = Path(db_path)
    if read_only and not db_path.exists():
        raise StoreError(f"no store at {db_path}; run a sweep first, e.g. `ssmscope sweep smoke --db {db_path}`")
    if not read_only:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreError(f"the store {db_path} is being written by another process (a sweep or ingest); "
                             "try again when it finishes") from None
        raise StoreError(f"cannot open the store {db_path}: {exc}") from None
    if not read_only:
        con.execute(queries.SCHEMA)
        con.execute(queries.SET_META, ["schema_version", str(SCHEMA_VERSION)])
    else:
        check_schema(con, db_path)
    return con


def check_schema(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """Raise a StoreError unless the store has every table and our schema version."""
    tables = {r[0] for r in con.execute(queries.LIST_TABLES).fetchall()}
    missing = {"meta", "runs", "probes", "losses"} - tables
    if missing:
        raise StoreError(f"{db_path} is not an ssmscope store (missing tables: {', '.join(sorted(missing))})")
    rows = con.execute(queries.GET_META, ["schema_version"]).fetchall()
    row = rows[0] if rows else None
    version = int(row[0]) if row else None
    if version != SCHEMA_VERSION:
        raise StoreError(f"{db_path} has schema version {version}; this ssmscope reads version "
                         f"{SCHEMA_VERSION}: re-ingest its shards into a new store (`ssmscope ingest`)")


@dataclass
class IngestReport:
    loaded: int = 0
    skipped: int = 0
    replaced: int = 0


def ingest(db_path: Path, shard_root: Path | None = None) -> IngestReport:
    """Load every complete shard under `shard_root` into the store (idempotent)."""
    shard_root = Path(shard_root) if shard_root is not None else shard_dir_for(db_path)
    clean_temporaries(shard_root)
    report = IngestReport()
    con = connect(db_path)
    try:
        for shard in list_shards(shard_root):
            run = pq.read_table(shard / "runs.parquet", columns=["run_id", "finished_at"]).to_pylist()[0]
            found = con.execute(queries.RUN_FINISHED_AT, [run["run_id"]]).fetchall()
            have = found[0] if found else None
            if have is not None and have[0] == run["finished_at"]:
                report.skipped += 1
                continue
            con.execute("BEGIN TRANSACTION")
            for q in (queries.DELETE_RUN, queries.DELETE_PROBES, queries.DELETE_LOSSES):
                con.execute(q, [run["run_id"]])
            con.execute(queries.INSERT_RUN, [str(shard / "runs.parquet")])
            con.execute(queries.INSERT_PROBES, [str(shard / "probes.parquet")])
            con.execute(queries.INSERT_LOSSES, [str(shard / "losses.parquet")])
            con.execute("COMMIT")
            if have is None:
                report.loaded += 1
            else:
                report.replaced += 1
    finally:
        con.close()
    return report


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


def counts(db_path: Path) -> dict[str, int]:
    con = connect(db_path, read_only=True)
    try:
        runs, probes, losses = con.execute(queries.COUNT_ROWS).fetchall()[0]
        return {"runs": runs, "probes": probes, "losses": losses}
    finally:
        con.close()


def finished_run_ids(shard_root: Path, candidates: Iterable[str]) -> set[str]:
    """Runs among `candidates` whose shard says completed or diverged (resume skips them)."""
    return {rid for rid in candidates if shard_status(shard_root, rid) in FINISHED_STATUSES}
