"""Ingest: load published shards into the store, one short transaction per shard, never stopping at a bad one.

Per shard, under its publish lock (runs.store.shards): read the run row; skip the shard when the
store holds the same `finished_at` (idempotent); else read it whole and check it. A shard that
cannot be read — garbage, truncated, a file missing, an empty folder, rows of another run — is
quarantined (moved aside with its reason; its run then reruns on the next sweep); a shard of a
newer ssmscope is left where it is; every other shard loads, replacing its run's older rows in one
transaction. Ingest never touches a writer's temporaries, nor anything in the folder that is not an
ssmscope shard (runs.store.ownership): those are named in one warning line and left where they are.

The store is held at most `hold_s` seconds at a time, then closed and reopened, so that the
dashboard's read-only connections get in between; a lock held by another process is waited for up
to `wait_s` seconds. A storage fault stops the ingest as a one-line StoreError (what was committed
stays); a signal stops it as IngestInterrupted (the shard in flight is rolled back; rerun to finish).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ssmscope.runs.store import queries
from ssmscope.runs.store.connection import WaitFn, connect
from ssmscope.runs.store.errors import StoreError, is_interrupt, storage_error
from ssmscope.runs.store.layout import Migration, resolve_shard_dir
from ssmscope.runs.store.ownership import QUARANTINE_DIR, check_shard_root, is_owned_shard
from ssmscope.runs.store.shard_maintenance import quarantine
from ssmscope.runs.store.shards import (
    BadShard,
    NewerShard,
    ShardTables,
    publish_lock,
    read_run_row,
    read_shard,
)

HOLD_S = 2.0
"""Longest stretch one ingest holds the store before closing it for a moment (readers get in)."""
UNLOCKED_READS, UNLOCKED_RETRY_S = 3, 0.2
"""Reads of a shard, and the pause between them, where the filesystem has no locks (see `_read_unlocked`)."""


@dataclass
class IngestReport:
    """What one ingest did, by run id."""

    shard_root: Path | None = None
    loaded: list[str] = field(default_factory=list)
    """Runs new to the store."""
    replaced: list[str] = field(default_factory=list)
    """Runs whose newer shard replaced their rows."""
    skipped: int = 0
    """Shards already loaded (same finished_at)."""
    quarantined: dict[str, str] = field(default_factory=dict)
    """run_id → why its shard was moved to <shards>/.quarantine/."""
    unmovable: dict[str, str] = field(default_factory=dict)
    """run_id → why its shard is bad and why it could not be moved aside."""
    newer: dict[str, str] = field(default_factory=dict)
    """run_id → why its shard (of a newer ssmscope) was left unloaded."""
    busy: list[str] = field(default_factory=list)
    """Runs whose publish lock a writer held too long: left for the next ingest."""
    migration: Migration | None = None
    unknown_columns: dict[str, str] = field(default_factory=dict)
    """run_id → columns its shard holds that this ssmscope does not know (loaded without them)."""
    foreign: str | None = None
    """One line naming the entries of the shard folder ssmscope did not write (left untouched), or None."""

    @property
    def ingested(self) -> list[str]:
        return [*self.loaded, *self.replaced]

    def problems(self) -> str | None:
        """One line naming every shard not loaded and why, or None."""
        parts = []
        if self.quarantined:
            where = self.shard_root / QUARANTINE_DIR if self.shard_root else QUARANTINE_DIR
            parts.append(f"quarantined {len(self.quarantined)} bad shard(s) to {where} (their runs rerun on the "
                         f"next sweep): " + "; ".join(f"{r} ({why})" for r, why in self.quarantined.items()))
        if self.unmovable:
            parts.append(f"{len(self.unmovable)} bad shard(s) could not be moved aside: "
                         + "; ".join(f"{r} ({why})" for r, why in self.unmovable.items()))
        if self.newer:
            parts.append(f"left {len(self.newer)} shard(s) of a newer ssmscope unloaded: "
                         + "; ".join(f"{r} ({why})" for r, why in self.newer.items()))
        if self.busy:
            parts.append(f"{len(self.busy)} shard(s) being published right now, left for the next ingest: "
                         + ", ".join(self.busy))
        if self.unknown_columns:
            parts.append(f"loaded {len(self.unknown_columns)} shard(s) without columns this ssmscope does not know: "
                         + "; ".join(f"{r} ({cols})" for r, cols in self.unknown_columns.items()))
        if self.foreign:
            parts.append(self.foreign)
        return " | ".join(parts) if parts else None


class IngestInterrupted(KeyboardInterrupt):
    """A signal stopped an ingest: what was committed stays, the rest is loaded by the next ingest."""

    def __init__(self, report: IngestReport, db_path: Path):
        super().__init__("ingest interrupted")
        self.report = report
        self.db_path = db_path

    def describe(self) -> str:
        return (f"ingest interrupted after loading {len(self.report.ingested)} shard(s) into {self.db_path}; "
                f"the rest stay in {self.report.shard_root}: rerun `ssmscope ingest --db {self.db_path}` to finish")


class _Store:
    """The store's connection during one ingest: opened on demand, given up every `hold_s` seconds."""

    def __init__(self, db_path: Path, wait_s: float, on_wait: WaitFn | None, hold_s: float):
        self.db_path, self.wait_s, self.on_wait, self.hold_s = db_path, wait_s, on_wait, hold_s
        self.con: duckdb.DuckDBPyConnection | None = None
        self.opened = 0.0
        self.known: dict[str, str] = {}

    def open(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            self.con = connect(self.db_path, wait_s=self.wait_s, on_wait=self.on_wait)
            self.opened = time.monotonic()
            self.known = dict(self.con.execute(queries.RUNS_FINISHED_AT).fetchall())
        return self.con

    def breathe(self) -> None:
        """Close after `hold_s` seconds of holding, so waiting readers get the file."""
        if self.con is not None and time.monotonic() - self.opened > self.hold_s:
            self.close()

    def close(self) -> None:
        if self.con is not None:
            con, self.con = self.con, None
            con.close()


def ingest(db_path: Path, shard_root: Path | None = None, *, run_ids: Iterable[str] | None = None,
           wait_s: float = 0.0, on_wait: WaitFn | None = None, hold_s: float = HOLD_S) -> IngestReport:
    """Load published shards into the store: all of `shard_root` (default: the store's own shard folder),
    or only the shards of `run_ids`. See the module docstring for what happens to bad shards.

    Only shards ssmscope wrote are read or moved (runs.store.ownership); other entries of the folder are named
    in the report. A folder that holds entries but no shard is refused (ForeignFolder, a StoreError) before
    the store is opened or anything moves."""
    db_path = Path(db_path)
    root, migration = resolve_shard_dir(db_path, shard_root)  # migrates only into the store's own folder
    found = check_shard_root(root)  # refused before the store opens or anything moves
    report = IngestReport(shard_root=root, migration=migration, foreign=found.foreign_line())
    shards = found.shards if run_ids is None else [root / r for r in dict.fromkeys(run_ids) if is_owned_shard(root / r)]
    store = _Store(db_path, wait_s, on_wait, hold_s)
    try:
        if run_ids is None:
            store.open()  # creates the store, or says why it cannot, even with no shard to load
        for shard in shards:
            _ingest_one(store, root, shard, report)
            store.breathe()
    except KeyboardInterrupt:
        raise IngestInterrupted(report, db_path) from None
    except duckdb.Error as exc:
        if is_interrupt(exc):
            raise IngestInterrupted(report, db_path) from None
        raise storage_error(exc, db_path, "write the store") or StoreError(
            f"cannot write the store {db_path}: {str(exc).strip().splitlines()[0]}") from None
    except RuntimeError as exc:
        if is_interrupt(exc):
            raise IngestInterrupted(report, db_path) from None
        raise
    finally:
        store.close()
    return report


def _ingest_one(store: _Store, root: Path, shard: Path, report: IngestReport) -> None:
    run_id = shard.name
    store.open()
    try:
        with publish_lock(root, run_id) as locked:
            if not shard.is_dir():  # moved or replaced since listed: another ingest's business
                return
            tables = _read_if_new(store, shard, report, locked)
    except TimeoutError:
        report.busy.append(run_id)
        return
    except NewerShard as exc:
        report.newer[run_id] = str(exc)
        return
    except OSError as exc:  # the disk or permissions, not the shard
        raise storage_error(exc, shard, "read the shard") or exc from None
    if tables is not None:
        _insert(store, run_id, tables, report)


def _read_if_new(store: _Store, shard: Path, report: IngestReport, locked: bool) -> ShardTables | None:
    """The shard's tables when the store lacks them; None when skipped or quarantined (caller holds the lock)."""
    try:
        row = read_run_row(shard)
        if store.known.get(shard.name) == row["finished_at"] and row["finished_at"] is not None:
            report.skipped += 1
            return None
        return read_shard(shard) if locked else _read_unlocked(shard)
    except BadShard as exc:
        _set_aside(shard, str(exc), report)
        return None


def _read_unlocked(shard: Path) -> ShardTables:
    """Without a publish lock (a filesystem without locks), a retried run's writer may swap the shard while it
    is read: read it again until its run row is the same before and after (or it stays bad)."""
    for attempt in range(UNLOCKED_READS):
        try:
            tables = read_shard(shard)
            if read_run_row(shard)["finished_at"] == tables.runs.column("finished_at")[0].as_py():
                return tables
        except BadShard:
            if attempt == UNLOCKED_READS - 1:
                raise
        time.sleep(UNLOCKED_RETRY_S)
    raise BadShard(f"changed while being read, {UNLOCKED_READS} times")


def _set_aside(shard: Path, reason: str, report: IngestReport) -> None:
    try:
        quarantine(shard.parent, shard.name, reason)
        report.quarantined[shard.name] = reason
    except OSError as exc:
        report.unmovable[shard.name] = f"{reason}; not moved: {exc.strerror or exc}"


def _insert(store: _Store, run_id: str, tables: ShardTables, report: IngestReport) -> None:
    """Replace the run's rows with the shard's, in one transaction."""
    con = store.con
    had = run_id in store.known
    con.execute("BEGIN TRANSACTION")
    try:
        for query in (queries.DELETE_RUN, queries.DELETE_PROBES, queries.DELETE_LOSSES):
            con.execute(query, [run_id])
        for query, table in ((queries.INSERT_RUN_ROWS, tables.runs), (queries.INSERT_PROBE_ROWS, tables.probes),
                             (queries.INSERT_LOSS_ROWS, tables.losses)):
            con.register(queries.SHARD_VIEW, table)
            try:
                con.execute(query)
            finally:
                try:
                    con.unregister(queries.SHARD_VIEW)
                except duckdb.Error:  # an interrupted statement aborted the transaction: the interrupt, not this,
                    pass  # is what the caller must see (the rollback below discards the view with it)
        con.execute("COMMIT")
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        if is_interrupt(exc):  # a stop signal inside DuckDB's read of the shard: the interrupt, not a bad shard
            raise KeyboardInterrupt from None
        if isinstance(exc, duckdb.ConversionException | duckdb.ConstraintException | duckdb.InvalidInputException):
            root = Path(report.shard_root)
            with publish_lock(root, run_id):
                _set_aside(root / run_id, f"rejected by the store: {str(exc).splitlines()[0]}", report)
            return
        raise
    store.known[run_id] = tables.runs.column("finished_at")[0].as_py()
    if tables.unknown:
        report.unknown_columns[run_id] = ", ".join(tables.unknown)
    (report.replaced if had else report.loaded).append(run_id)
