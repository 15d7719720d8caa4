"""Cached reads of the store for the dashboard pages.

Every read goes through runs.store (read-only, one short-lived connection per query) and is
cached with `st.cache_data`, keyed by the store's path and its *version* (size and mtime of the
DuckDB file and its WAL): a new ingest changes the version, so the next rerun reads fresh data.
The app deliberately holds no open connection between reruns: DuckDB lets no writer in while a
reader holds the file, and a dashboard left open must not block `ssmscope sweep` from ingesting.

While a sweep ingests, a read can find the file locked. `store_problem` retries for about a second
(LOCK_RETRIES × LOCK_WAIT_S); if the lock stays, app/main.py keeps showing the last version it read
(its cached frames need no file access) and says "updating…" instead of an error.

A store that is missing, locked by a writer, of another schema version or empty is reported by
`store_problem` as a message with the command that fixes it; pages never see a traceback for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import polars as pl
import streamlit as st

from ssmscope.runs.analysis import export, transfer
from ssmscope.runs.analysis.slope_tables import slope_table
from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.runs.store import db as store
from ssmscope.runs.store import queries
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS, WIDTH_KEYS

DB_STATE_KEY = "ssmscope_db"
"""session_state key of the store path (set from --db at start-up, changed by the store picker)."""
STORE_KEY = "ssmscope_store"
"""session_state key under which app/main.py leaves the Store (path and version) this run shows."""
LOCK_RETRIES = 5
LOCK_WAIT_S = 0.2
"""A read that finds the store locked by a writer is retried LOCK_RETRIES times, LOCK_WAIT_S apart."""
FIRST_SWEEP = "ssmscope sweep smoke --db {db}"
"""The command that fills an empty store (~30 s on a laptop CPU)."""


class Store(NamedTuple):
    """The store a page reads: its path and version (hashable, so it keys the caches)."""

    path: str
    version: tuple


def version_of(path: Path) -> tuple:
    """(size, mtime_ns) of the DuckDB file and of its WAL; () when there is no file."""
    parts: list[int] = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            s = p.stat()
        except OSError:
            continue
        parts += [s.st_size, s.st_mtime_ns]
    return tuple(parts)


def store_path() -> Path:
    """The store the session looks at: the picker's choice, else --db, else the default."""
    return Path(st.session_state.get(DB_STATE_KEY) or store.default_db_path())


def store_now() -> Store:
    """The session's store with its version as of now (a stat of the files, no DuckDB access)."""
    path = store_path()
    return Store(str(path), version_of(path))


def current_store() -> Store:
    """The store this run shows: what app/main.py chose (the last readable version while a sweep writes)."""
    chosen = st.session_state.get(STORE_KEY)
    return chosen if isinstance(chosen, Store) and chosen.path == str(store_path()) else store_now()


# --- health ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Why the store cannot be shown: a message, and the command that fixes it (if one does)."""

    title: str
    message: str
    command: str | None = None
    locked: bool = False  # a writer holds the store: it passes when the sweep's ingest does


def problem_from_error(exc: BaseException, path: str) -> Problem:
    """A StoreError or a DuckDB error as a Problem (the store module's messages say what to do)."""
    if isinstance(exc, store.StoreError):
        text = str(exc)
        if text.startswith("no store at"):
            return Problem("No store yet", text, FIRST_SWEEP.format(db=path))
        if is_locked(exc):
            return Problem("The store is being written", text, locked=True)
        if "schema version" in text:
            return Problem("Old store", text, f"ssmscope ingest --db {path}")
        return Problem("Not an ssmscope store", text)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_locked(exc):
        return Problem("The store is being written", f"the store {path} is being written by another process "
                       "(a sweep or ingest); try again when it finishes", locked=True)
    return Problem("Cannot read the store", f"cannot read the store {path}: {first}")


def is_locked(exc: BaseException) -> bool:
    """True for the error of a read that found the store held by a writer (a sweep ingesting)."""
    text = str(exc).lower()
    return "being written" in text or "could not set lock" in text or "conflicting lock" in text


def retry_locked(read: Callable[[], Any], retries: int = LOCK_RETRIES, wait: float = LOCK_WAIT_S) -> Any:
    """read(), tried again while the store is locked by a writer; the last error if it stays locked."""
    for attempt in range(retries + 1):
        try:
            return read()
        except (store.StoreError, duckdb.Error) as exc:
            if not is_locked(exc) or attempt == retries:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


@st.cache_data(show_spinner=False, max_entries=16)
def _counts(db: Store) -> dict[str, int]:
    return retry_locked(lambda: store.counts(Path(db.path)))


def store_problem(db: Store) -> Problem | None:
    """None when the store has runs to show; otherwise what is wrong and how to fix it."""
    try:
        n = _counts(db)
    except (store.StoreError, duckdb.Error) as exc:
        return problem_from_error(exc, db.path)
    if n["runs"] == 0:
        return Problem("The store is empty", f"{db.path} has no runs yet. Run a first sweep (about 30 s on a "
                       "CPU); it ingests its runs into this store when it finishes:", FIRST_SWEEP.format(db=db.path))
    return None


def counts(db: Store) -> dict[str, int]:
    return _counts(db)


# --- frames --------------------------------------------------------------------------------------
Where = tuple[tuple[str, tuple[Any, ...]], ...]
"""A selection of runs in hashable form: ((column, (values...)), ...), applied to a frame with polars."""


def where(**columns: Any) -> Where:
    """A Where from column=value(s) keywords; None values are left out (no restriction)."""
    out = []
    for key, value in sorted(columns.items()):
        if value is None:
            continue
        values = tuple(value) if isinstance(value, list | tuple | set) else (value,)
        out.append((key, tuple(sorted(values, key=str))))
    return tuple(out)


def apply(frame: pl.DataFrame, sel: Where) -> pl.DataFrame:
    """The rows of `frame` whose columns take one of the selected values."""
    for key, values in sel:
        frame = frame.filter(pl.col(key).is_in(list(values)))
    return frame


def _sweep_filter(sweep: str | None) -> dict[str, str] | None:
    return None if sweep is None else {"spec": sweep}


@st.cache_data(show_spinner=False, max_entries=16)
def runs_frame(db: Store) -> pl.DataFrame:
    """Every run (runs.store.db.load_runs): keys, status, timings."""
    return store.load_runs(Path(db.path))


@st.cache_resource(show_spinner="Reading probes…", max_entries=4)
def probe_frame(db: Store, sweep: str | None) -> pl.DataFrame:
    """Probe totals (group "") of one sweep (None: all), joined with run keys (runs.store.db.load_probe_frame).

    Per-parameter-group rows are dropped here: no page shows them, and they are most of a store.
    Cached as a resource, not as data: st.cache_data would pickle a copy of this frame (~80 MB for a
    store of a million probe rows, ~0.3 s) on every rerun. Nothing mutates a polars frame in place here,
    so sharing the one object between reruns and sessions is safe.
    """
    frame = store.load_probe_frame(Path(db.path), _sweep_filter(sweep))
    return frame.filter(pl.col("group") == "")


@st.cache_data(show_spinner=False, max_entries=64)
def run_probes(db: Store, run_id: str) -> pl.DataFrame:
    """One run's probe totals (its detail view)."""
    frame = store.load_probe_frame(Path(db.path), {"run_id": run_id})
    return frame.filter(pl.col("group") == "")


@st.cache_data(show_spinner=False, max_entries=64)
def run_losses(db: Store, run_id: str) -> pl.DataFrame:
    """One run's loss rows."""
    return store.load_losses(Path(db.path), {"run_id": run_id})


@st.cache_data(show_spinner=False, max_entries=64)
def run_config(db: Store, run_id: str) -> str | None:
    """A run's full config as stored (JSON text), or None."""
    con = store.connect(Path(db.path), read_only=True)
    try:
        rows = con.execute(queries.RUN_CONFIG, [run_id]).fetchall()
    finally:
        con.close()
    return rows[0][0] if rows else None


# --- analyses (runs/) ----------------------------------------------------------------------------
def _axis_frame(frame: pl.DataFrame, design: str, fixed: int | None) -> pl.DataFrame:
    """Keep the runs of one width axis: a fixed N_x for design n_u, a fixed N_u for n_x."""
    if design == "n_u" and fixed is not None:
        return frame.filter(pl.col("n_x") == fixed)
    if design == "n_x" and fixed is not None:
        return frame.filter(pl.col("n_u") == fixed)
    return frame


@st.cache_data(show_spinner="Fitting slopes…", max_entries=64)
def slopes(db: Store, sweep: str | None, sel: Where = (), *, convention: str = "rms", design: str = "joint",
           fixed: int | None = None, step: int | str | None = "last", layers: str = "each",
           include_failed: bool = False, n_boot: int = DEFAULT_N_BOOT) -> pl.DataFrame:
    """Every cell's slope over the selected runs of a sweep (one width axis), with its linear-response regime
    and the trend of its running exponents: `ssmscope slopes --table full` (runs.analysis.slope_tables)."""
    frame = _axis_frame(apply(probe_frame(db, sweep), sel), design, fixed)
    if frame.is_empty():
        return pl.DataFrame()
    return slope_table(frame, table="full", convention=convention, design=design, layers=layers, step=step,
                       n_boot=n_boot, include_failed=include_failed)


@st.cache_data(show_spinner="Fitting the paper's table…", max_entries=32)
def paper(db: Store, sweep: str | None, sel: Where = (), *, convention: str = "rms", design: str = "joint",
          layers: str = "mean", step: int | str | None = "last", include_failed: bool = False,
          n_boot: int = DEFAULT_N_BOOT) -> pl.DataFrame:
    """The rows behind the paper's table over the selected runs, with regime and trend, as `ssmscope slopes`
    computes them (runs.analysis.slope_tables)."""
    frame = apply(probe_frame(db, sweep), sel)
    if frame.is_empty():
        return pl.DataFrame()
    return slope_table(frame, table="paper", convention=convention, design=design, layers=layers, step=step,
                       n_boot=n_boot, include_failed=include_failed)


@st.cache_data(show_spinner=False, max_entries=32)
def coincidence_notes(db: Store, sweep: str | None, sel: Where = (), *, design: str = "joint") -> list[str]:
    """Notes on presets that are one parameterization for the selection (as `ssmscope slopes` captions them)."""
    frame = apply(probe_frame(db, sweep), sel)
    return export.coincidence_notes(frame.select(*PARAMETERIZATION_KEYS, *WIDTH_KEYS).unique(),
                                    design)


@dataclass(frozen=True)
class Transfer:
    """The learning-rate transfer analysis of one sweep (runs.analysis.transfer)."""

    final: pl.DataFrame  # one row per run: its final loss (diverged → +inf)
    optima: pl.DataFrame  # per (preset, discretization, optimizer, width): η*
    drift: pl.DataFrame  # per (preset, discretization, optimizer): slope of log2 η* vs log2 width


@st.cache_data(show_spinner=False, max_entries=16)
def sweep_losses(db: Store, sweep: str | None) -> pl.DataFrame:
    return store.load_losses(Path(db.path), _sweep_filter(sweep))


@st.cache_data(show_spinner=False, max_entries=16)
def readout_split(db: Store, sweep: str | None, step: int = 0) -> pl.DataFrame:
    """The readout probes' gradient split at `step` (default: at initialisation, where no learning rate has acted
    yet): per preset, discretisation, optimizer, readout, width and group (input / readout / shared) the mean over
    runs of ‖∂L/∂W‖ on the probe batch. Empty when the sweep recorded no readout probes."""
    frame = store.load_probe_frame(Path(db.path), _sweep_filter(sweep))
    frame = frame.filter((pl.col("site") == "readout_grad") & (pl.col("step") == step))
    if frame.is_empty():
        return pl.DataFrame(schema={"preset": pl.String, "width": pl.Int64, "group": pl.String, "norm": pl.Float64})
    width = "n_u" if frame["n_u"].n_unique() > 1 else "n_x"
    keys = [k for k in (*PARAMETERIZATION_KEYS, "readout") if k in frame.columns]
    return (frame.with_columns(pl.col(width).alias("width"), pl.col("sumsq").sqrt().alias("norm"))
            .group_by(*keys, "width", "group").agg(pl.col("norm").mean()).sort(*keys, "group", "width"))


@st.cache_data(show_spinner="Finding optimal learning rates…", max_entries=16)
def lr_transfer(db: Store, sweep: str | None, use: str) -> Transfer | None:
    """ssmscope.runs.analysis.transfer over a sweep's final losses; None when no run logged `use`."""
    losses = sweep_losses(db, sweep)
    if losses.is_empty() or losses[use].is_null().all():
        return None
    final = transfer.final_losses(losses, use=use)
    opt = transfer.optima(final)
    return Transfer(final, opt, transfer.drift(opt, final))
