"""Per-run Parquet shards: how a worker hands its results to the store, safe with any number of
writers and ingesters.

    <shards>/<run_id>/{runs,probes,losses}.parquet   a published shard: complete, or absent
    <shards>/<run_id>/.ssmscope-shard                 its marker: what makes it ssmscope's (runs.store.ownership)
    <shards>/.tmp-<run_id>-<token>/                   a shard being written, owned by its writer
    <shards>/.tmp-<run_id>-<token>.lock               locked by that writer while it lives
    <shards>/.locks/<run_id>.lock                     the run's publish lock
    <shards>/.quarantine/<run_id>-<UTC time>/         bad shards set aside by ingest, with REASON.txt

Write: a writer (token: host, pid and a random part) locks its own lock file, writes and fsyncs
its temporary, and publishes it with one rename under the run's publish lock (a retried run's
older shard is swapped out under the same lock); on any error it removes its own temporary.
SIGINT and SIGTERM wait until a started shard is written, so Ctrl-C, `kill` or the death of a
local worker's parent lets that shard publish. Read: ingest reads a shard whole under its publish
lock, so it never sees half of a swap. Nothing that starts with '.' is touched by anyone but its
writer, except stale temporaries by an explicit cleanup (runs.store.shard_maintenance), and nothing
ssmscope did not write is touched at all (runs.store.ownership).
Imports pyarrow and the standard library only (the worker path).
"""

from __future__ import annotations

import errno
import os
import platform
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ssmscope.runs.store.filelock import HeldLock, locked
from ssmscope.runs.store.ownership import (
    LOCK_DIR,
    MARKER_TEXT,
    QUARANTINE_DIR,
    SHARD_MARKER,
    TMP_PREFIX,
    is_owned_shard,
    survey,
)
from ssmscope.runs.store.schema import (
    LOSS_COLUMNS,
    PROBE_TABLE_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    RunStatus,
)

__all__ = ["LOCK_DIR", "PROBE_KEY", "QUARANTINE_DIR", "REQUIRED_COLUMNS", "SHARD_TABLES", "TMP_PREFIX", "BadShard",
           "NewerShard", "ShardTables", "arrow_schema", "check_folder_writable", "check_shard", "duplicate_keys",
           "list_shards", "publish_lock", "read_run_row", "read_shard", "shard_status", "signals_deferred",
           "write_shard", "writer_token"]

PUBLISH_LOCK_TIMEOUT_S = 30.0
"""How long a writer or an ingest waits for a run's publish lock (held for one rename or one read)."""

SHARD_TABLES: dict[str, dict[str, str]] = {
    "runs.parquet": RUN_COLUMNS, "probes.parquet": PROBE_TABLE_COLUMNS, "losses.parquet": LOSS_COLUMNS}
"""The files of a shard and the columns of each."""
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs.parquet": ("run_id", "status", "finished_at"),
    "probes.parquet": ("run_id", "step", "layer", "site", "quantity", "sumsq", "count"),
    "losses.parquet": ("run_id", "step"),
}
"""Columns a shard file must carry (the keys, and the raw sums every norm is derived from); any other column
missing (a shard of an older ssmscope) is read as null."""
PROBE_KEY = ("run_id", "step", "layer", "site", "quantity", "group")
"""A probe record's key: a shard (and the store) holds at most one row per key."""


class BadShard(ValueError):
    """A published shard that cannot be loaded: a file missing, unreadable as Parquet, or inconsistent."""


class NewerShard(ValueError):
    """A shard written by a newer ssmscope (a schema this one does not know): left in place, not loaded."""


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    """The Arrow schema of a table of runs.store.schema."""
    return pa.schema([(c, pa.type_for_alias(t)) for c, t in columns.items()])


def _table(rows: list[dict[str, Any]], columns: dict[str, str], keys: dict[str, Any]) -> pa.Table:
    """`rows` as a table of `columns`; `keys` (e.g. the run id) fill their column on every row."""
    data = {c: [keys[c]] * len(rows) if c in keys else [r.get(c) for r in rows] for c in columns}
    return pa.table(data, schema=arrow_schema(columns))


def writer_token() -> str:
    """host-pid-random: names a writer's temporaries, unique across processes and nodes."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", platform.node() or "host")
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


@contextmanager
def publish_lock(shard_root: Path, run_id: str, timeout_s: float = PUBLISH_LOCK_TIMEOUT_S) -> Iterator[bool]:
    """The run's publish lock: writers hold it for the rename, ingest for reading the shard."""
    folder = Path(shard_root) / LOCK_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError:  # a shard folder we may only read: no writer to exclude from here
        pass
    with locked(folder / f"{run_id}.lock", timeout_s=timeout_s) as held:
        yield held


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (main thread only), then deliver them."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def write_shard(shard_root: Path, run: dict[str, Any], probes: list[dict[str, Any]],
                losses: list[dict[str, Any]]) -> Path:
    """Write one run's shard and publish it atomically; replaces an older shard of the same run.

    Raises OSError (ENOSPC, EACCES, ...) with nothing left behind: the temporary is removed."""
    shard_root = Path(shard_root)
    shard_root.mkdir(parents=True, exist_ok=True)
    run_id = run["run_id"]
    base = f"{TMP_PREFIX}{run_id}-{writer_token()}"
    tmp, old = shard_root / base, shard_root / f"{base}.old"
    with signals_deferred():
        lock = HeldLock(shard_root / f"{base}.lock")
        try:
            tmp.mkdir()
            (tmp / SHARD_MARKER).write_text(f"{MARKER_TEXT}run {run_id}\nwriter {base.removeprefix(TMP_PREFIX)}\n")
            for name, (rows, columns, keys) in {
                "runs.parquet": ([run], RUN_COLUMNS, {}),
                "probes.parquet": (probes, PROBE_TABLE_COLUMNS, {"run_id": run_id}),
                "losses.parquet": (losses, LOSS_COLUMNS, {"run_id": run_id}),
            }.items():
                pq.write_table(_table(rows, columns, keys), tmp / name)
                _fsync(tmp / name)
            final = shard_root / run_id
            with publish_lock(shard_root, run_id):
                swapped = final.exists() or final.is_symlink()
                if swapped and not is_owned_shard(final):  # never swap out (and delete) what ssmscope did not write
                    raise FileExistsError(errno.EEXIST, "exists and is not an ssmscope shard (left untouched)",
                                          str(final))
                if swapped:  # a retried run: swap the older shard out under the lock
                    os.rename(final, old)
                try:
                    os.rename(tmp, final)
                except BaseException:
                    if swapped:  # put the older shard back: a published shard is never lost to a failed write
                        os.rename(old, final)
                    raise
            _fsync(shard_root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
            lock.release(unlink=True)
    return final


def check_folder_writable(shard_root: Path) -> None:
    """Create the shard folder and write, fsync and remove one small file in it: OSError (ENOSPC, EACCES,
    EROFS, ...) now, before a sweep trains, rather than when its first run finishes."""
    root = Path(shard_root)
    probe = root / f"{TMP_PREFIX}write-check-{writer_token()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ssmscope write check\n" * 64)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # name the folder, not the probe file
        raise OSError(exc.errno, exc.strerror, str(root)) from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def list_shards(shard_root: Path) -> list[Path]:
    """Published shard folders ssmscope wrote (runs.store.ownership); every other entry is left alone."""
    return survey(shard_root).shards


# --- reading -----------------------------------------------------------------------------------
def check_shard(shard: Path) -> str | None:
    """Why a shard cannot be a finished run's (a file missing, not Parquet, a required column missing, no single
    run row), or None.

    Cheap: reads the Parquet footers only. Resume treats a shard that fails this as absent (its run is redone);
    ingest reads everything (`read_shard`) and quarantines what fails."""
    for name in SHARD_TABLES:
        path = Path(shard) / name
        try:
            meta = pq.read_metadata(path)
        except FileNotFoundError:
            return f"{name} is missing"
        except (pa.ArrowException, OSError) as exc:
            return f"{name}: {_first_line(exc)}"
        missing = [c for c in REQUIRED_COLUMNS[name] if c not in meta.schema.names]
        if missing:
            return f"{name} has no column {missing[0]!r}"
        if name == "runs.parquet" and meta.num_rows != 1:
            return f"runs.parquet holds {meta.num_rows} rows, expected 1"
    return None


def shard_status(shard_root: Path, run_id: str) -> str | None:
    """The status a run's shard records, or None when it has no shard or one that cannot be read."""
    shard = Path(shard_root) / run_id
    if not shard.is_dir() or check_shard(shard) is not None:
        return None
    try:
        return pq.read_table(shard / "runs.parquet", columns=["status"]).column("status")[0].as_py()
    except (pa.ArrowException, OSError, KeyError):
        return None


def _refuse_empty(shard: Path) -> None:
    if shard.is_dir() and not any(shard.iterdir()):
        raise BadShard("empty folder (left by an interrupted writer of an older ssmscope)")


def read_run_row(shard: Path) -> dict[str, Any]:
    """The shard's run row (BadShard when runs.parquet is missing or broken)."""
    _refuse_empty(Path(shard))
    table = _read(Path(shard) / "runs.parquet")
    if table.num_rows != 1:
        raise BadShard(f"runs.parquet holds {table.num_rows} rows, expected 1")
    return table.to_pylist()[0]


@dataclass(frozen=True)
class ShardTables:
    """A shard read whole, each table conformed to the store's columns (in schema order)."""

    runs: pa.Table
    probes: pa.Table
    losses: pa.Table
    unknown: tuple[str, ...] = ()
    """`file:column` of columns the shard holds that this schema does not know (not loaded)."""


def read_shard(shard: Path) -> ShardTables:
    """Read and check a whole shard; BadShard (corrupt, quarantine it) or NewerShard (leave it)."""
    shard = Path(shard)
    _refuse_empty(shard)
    raw = {name: _read(shard / name) for name in SHARD_TABLES}
    version = _schema_version(raw["runs.parquet"])
    if version > SCHEMA_VERSION:  # before any column check: a newer ssmscope may have changed them
        raise NewerShard(f"schema version {version} (this ssmscope reads {SCHEMA_VERSION})")
    tables = {name: _conform(raw[name], columns, name) for name, columns in SHARD_TABLES.items()}
    unknown = tuple(f"{name}:{c}" for name, table in raw.items() for c in table.column_names
                    if c not in SHARD_TABLES[name])
    runs = tables["runs.parquet"]
    if runs.num_rows != 1:
        raise BadShard(f"runs.parquet holds {runs.num_rows} rows, expected 1")
    row = runs.to_pylist()[0]
    if row["run_id"] != shard.name:
        raise BadShard(f"runs.parquet is run {row['run_id']!r}, not the folder's {shard.name!r}")
    if row["status"] not in {s.value for s in RunStatus}:
        raise BadShard(f"runs.parquet: status {row['status']!r} is not one of {', '.join(s.value for s in RunStatus)}")
    for name in ("probes.parquet", "losses.parquet"):
        ids = set(tables[name].column("run_id").unique().to_pylist())
        if ids - {shard.name}:
            raise BadShard(f"{name} holds rows of run(s) {', '.join(sorted(map(str, ids - {shard.name})))}")
    duplicates = duplicate_keys(tables["probes.parquet"])
    if duplicates:
        raise BadShard(f"probes.parquet holds {duplicates} probe key(s) more than once "
                       f"({', '.join(PROBE_KEY)} must be unique)")
    return ShardTables(runs, tables["probes.parquet"], tables["losses.parquet"], unknown)


def duplicate_keys(probes: pa.Table) -> int:
    """How many probe keys (PROBE_KEY) a probe table holds more than once."""
    if probes.num_rows == 0:
        return 0
    counts = probes.select(list(PROBE_KEY)).group_by(list(PROBE_KEY)).aggregate([([], "count_all")])
    return int(pc.sum(pc.greater(counts.column("count_all"), 1)).as_py() or 0)


def _schema_version(runs: pa.Table) -> int:
    """The schema version a shard's run row declares (0 when it declares none or nothing readable)."""
    if "schema_version" not in runs.column_names or runs.num_rows != 1:
        return 0
    try:
        return int(runs.column("schema_version")[0].as_py() or 0)
    except (TypeError, ValueError):
        return 0


def _read(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise BadShard(f"{path.name} is missing") from None
    except pa.ArrowException as exc:
        raise BadShard(f"{path.name}: {_first_line(exc)}") from None
    except OSError as exc:
        if exc.errno is None:  # Arrow's own errors (a corrupt page) come as OSError without errno
            raise BadShard(f"{path.name}: {_first_line(exc)}") from None
        raise  # the disk or permissions, not the shard: a storage error


def _conform(table: pa.Table, columns: dict[str, str], name: str) -> pa.Table:
    """`table` with exactly `columns`, in order: older shards' missing columns as null, columns this schema does
    not know left out (the caller checked that the shard claims no newer schema, and reports them); a missing
    required column or a type that does not cast is BadShard."""
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in table.column_names]
    if missing:
        raise BadShard(f"{name} has no column {missing[0]!r}")
    arrays = []
    for field in arrow_schema(columns):
        if field.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise BadShard(f"{name}: column {field.name!r} is {column.type}, expected {field.type}") from None
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=arrow_schema(columns))


ARROW_REASONS = (("magic bytes not found", "not a Parquet file (truncated, or overwritten with something else)"),
                 ("file size is 0 bytes", "empty file (0 bytes)"),
                 ("corrupt", "corrupt data inside the file"))
"""Arrow's error texts → the short reason a quarantine records (first match; else Arrow's first sentence)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for pattern, reason in ARROW_REASONS:
        if pattern in text.lower():
            return reason
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
