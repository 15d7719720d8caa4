"""The store from a notebook: save a probe frame where the CLI and the dashboard read it, and load it back.

    save(frame, db, runs=)  one Parquet shard per run of the frame (runs.store.shards), then ingest into db
    load(db, **keys)   the probe frame of the store (runs.store.db.load_probe_frame), filtered by run keys
    ingest(db)         load the shards beside db (what `ssmscope ingest` does; Monitor's shards, say)

DuckDB and pyarrow load on the first call, not on `import ssmscope`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from ssmscope.records import RunData

__all__ = ["default_db", "ingest", "load", "save"]


def default_db() -> Path:
    """The store the CLI and dashboard use by default: ./ssmscope-data/ssmscope.duckdb (env SSMSCOPE_DB)."""
    from ssmscope.runs.store.db import default_db_path

    return default_db_path()


def save(frame: pl.DataFrame, db: str | Path | None = None, *, shards: str | Path | None = None,
         runs: Mapping[str, RunData] | None = None) -> Any:
    """Write every run of a probe frame as a shard and ingest them into `db`; returns the IngestReport.

    A run found in `runs` (what `coord_check(..., return_runs=True)` hands back with the frame) is saved with
    its full row (config, timings, provenance) and its losses; any other run of the frame (no `runs`, or a
    frame read back from a file) with the keys the frame carries, its last logged step, and no losses —
    derived from the frame alone, so the same frame and `runs` save the same rows whatever ran before in
    the process (nothing is remembered between calls). Shards go to `shards`, default
    the store's own shard folder `<db>.shards` (as sweeps). Raises StoreError (one line naming the file) when
    a shard or the store cannot be written, or when `shards` is a folder of files ssmscope did not write
    (nothing is written then); shards written before a failure stay and a later save or `ssmscope ingest`
    completes the store. A frame holding a probe key (run, step, layer, site, quantity, group) twice — a
    notebook cell run twice and concatenated, say — is refused (ConfigError) before anything is written.
    """
    from ssmscope.probes.schema import PROBE_COLUMNS
    from ssmscope.runs.store.db import StoreError, default_db_path, shard_dir_for
    from ssmscope.runs.store.db import ingest as ingest_shards
    from ssmscope.runs.store.ownership import check_shard_root
    from ssmscope.runs.store.schema import (
        FRAME_RUN_KEYS,
        OPTIONAL_RUN_KEYS,
        PROBE_FRAME_COLUMNS,
        RUN_COLUMNS,
        config_of_init_base,
    )
    from ssmscope.runs.store.shards import PROBE_KEY, write_shard
    from ssmscope.runs.sweeps.record import loss_rows, run_row
    from ssmscope.ssm.errors import ConfigError

    if not isinstance(frame, pl.DataFrame):
        raise ConfigError(f"save takes a polars DataFrame (a probe frame), not {type(frame).__name__}")
    if runs is not None and not isinstance(runs, Mapping):
        raise ConfigError(f"runs={type(runs).__name__}; allowed: the Runs coord_check(..., return_runs=True) returns "
                          "(a mapping run id → RunData), or None")
    missing = [c for c in PROBE_FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"not a probe frame: it lacks {', '.join(missing)}")
    duplicated = frame.select(list(PROBE_KEY)).is_duplicated()
    if duplicated.any():
        raise ConfigError(f"the frame holds {int(duplicated.sum())} rows whose probe key ({', '.join(PROBE_KEY)}) "
                          "is not unique (a frame concatenated with itself?): `frame.unique()` drops exact repeats")
    db_path = Path(db) if db is not None else default_db_path()
    shard_root = Path(shards) if shards is not None else shard_dir_for(db_path)
    check_shard_root(shard_root)  # a folder of the user's own files: refused before any shard is written
    for (run_id,), part in frame.partition_by("run_id", as_dict=True, maintain_order=True).items():
        known = runs.get(run_id) if runs is not None else None
        if known is not None:
            row, losses = known.row, known.losses
        else:
            first = part.row(0, named=True)
            keys = {k: first[k] for k in (*FRAME_RUN_KEYS, *OPTIONAL_RUN_KEYS) if k in first and k in RUN_COLUMNS}
            if first.get("init_base"):  # a derived key: the store reads it back from the config
                keys["config_json"] = config_of_init_base(first["init_base"])
            row, losses = run_row(**keys, last_finite_step=int(part["step"].max())), []
        records = part.select(list(PROBE_COLUMNS)).to_dicts()
        try:
            write_shard(shard_root, row, records, loss_rows(losses))
        except OSError as exc:
            raise StoreError(f"cannot write the shard of run {run_id} under {shard_root}: {exc.strerror or exc}; "
                             "free space or choose another folder (shards=)") from None
    try:
        return ingest_shards(db_path, shard_root)
    except OSError as exc:
        raise StoreError(f"cannot write the store {db_path}: {exc.strerror or exc}; the shards are in "
                         f"{shard_root}: `ssmscope ingest --db {db_path}` loads them once it can") from None


def load(db: str | Path | None = None, **keys: Any) -> pl.DataFrame:
    """The probe frame of a store (all runs, or those whose run keys equal `keys`, e.g. spec="coord_check")."""
    from ssmscope.runs.store.db import default_db_path, load_probe_frame

    return load_probe_frame(Path(db) if db is not None else default_db_path(), keys or None)


def ingest(db: str | Path | None = None, shards: str | Path | None = None) -> Any:
    """Load every complete shard under `shards` (default: the store's own shard folder, `<db>.shards`) into `db`;
    idempotent. Only shards ssmscope wrote are read or moved (see save)."""
    from ssmscope.runs.store.db import default_db_path
    from ssmscope.runs.store.db import ingest as ingest_shards

    return ingest_shards(Path(db) if db is not None else default_db_path(), None if shards is None else Path(shards))
