"""Opening the DuckDB store: the default path, a bounded wait for its lock, schema checks, write checks.

DuckDB 2 lets one process write a file, and a read-only connection fails while a writer holds it
(and a writer while readers hold it). Writers here (ingest, a sweep's check) hold the file briefly
and, when it is taken, wait up to a bound, saying once whom they wait for; what is still locked
after the bound is a StoreLocked naming the holder (reader or writer, PID, program).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from ssmscope.probes.schema import SCHEMA_VERSION
from ssmscope.runs.store import queries
from ssmscope.runs.store.errors import (
    StoreError,
    is_interrupt,
    is_lock_conflict,
    lock_error,
    lock_holder,
    storage_error,
)

DEFAULT_DB = Path("ssmscope-data") / "ssmscope.duckdb"
LOCK_RETRY_S = 0.1
WaitFn = Callable[[str], None]
"""Told once, with a one-line message, when an open starts waiting for the store's lock."""


def default_db_path() -> Path:
    return Path(os.environ.get("SSMSCOPE_DB", DEFAULT_DB))


FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
"""What a path that is not a regular file is, in words."""


def special_file(path: Path) -> str | None:
    """What `path` is when it exists and is not a regular file (a folder, a FIFO, a device, a socket), else
    None. Opening a FIFO blocks until a writer comes, so a store path must be checked before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or unreadable: the open says so
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in FILE_KINDS if test(mode)), "not a regular file")


def check_store_file(db_path: Path) -> None:
    """A one-line StoreError when the store path exists and is not a regular file."""
    kind = special_file(db_path)
    if kind is not None:
        raise StoreError(f"{db_path} is {kind}, not a store file; give the store's .duckdb file with --db")


def connect(db_path: Path, read_only: bool = False, *, wait_s: float = 0.0,
            on_wait: WaitFn | None = None) -> duckdb.DuckDBPyConnection:
    """Open the store (creating it and its tables when writing); every failure is a one-line StoreError.

    A lock held by another process is waited for up to `wait_s` seconds (`on_wait` is told once)."""
    db_path = Path(db_path)
    check_store_file(db_path)
    if read_only and not db_path.exists():
        raise StoreError(f"no store at {db_path}; run a sweep first, e.g. `ssmscope sweep smoke --db {db_path}`")
    if not read_only and not db_path.parent.is_dir():
        raise StoreError(f"the folder {db_path.parent} of the store {db_path.name} does not exist; "
                         "create it (mkdir -p) or check --db")
    t0 = time.monotonic()
    told = False
    while True:
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
            break
        except duckdb.Error as exc:
            if not is_lock_conflict(exc):
                raise _open_error(exc, db_path, read_only) from None
            waited = time.monotonic() - t0
            if waited >= wait_s:
                raise lock_error(db_path, exc, waited) from None
            if on_wait is not None and not told:
                holder = lock_holder(db_path, str(exc))
                on_wait(f"waiting up to {wait_s:.0f} s for the store {db_path}, held by {holder.describe()} "
                        f"({holder.kind})")
                told = True
            time.sleep(LOCK_RETRY_S)
    try:
        if read_only:
            check_schema(con, db_path)
        else:
            con.execute(queries.SCHEMA)
            con.execute(queries.SET_META, ["schema_version", str(SCHEMA_VERSION)])
    except BaseException as exc:
        con.close()
        if isinstance(exc, duckdb.Error):
            raise _open_error(exc, db_path, read_only) from None
        raise
    return con


def _open_error(exc: BaseException, db_path: Path, read_only: bool) -> BaseException:
    """A DuckDB error while opening as a one-line StoreError (a signal's interrupt as KeyboardInterrupt)."""
    if is_interrupt(exc):
        return KeyboardInterrupt()
    mapped = storage_error(exc, db_path, "read the store" if read_only else "write the store")
    if mapped is not None:
        return mapped
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"cannot open the store {db_path}: {first}")


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


def check_writable(db_path: Path, *, wait_s: float = 0.0, on_wait: WaitFn | None = None) -> None:
    """Open the store for writing, write to it and close it (a checkpoint): a StoreError now rather than
    after a sweep's training when the store cannot take its results (read-only, full, locked)."""
    con = connect(db_path, wait_s=wait_s, on_wait=on_wait)
    try:
        con.execute(queries.SET_META, ["last_write_check", time.strftime("%Y-%m-%dT%H:%M:%S%z")])
        con.execute("CHECKPOINT")
    except duckdb.Error as exc:
        raise _open_error(exc, db_path, False) from None
    finally:
        con.close()
