"""The store's one schema: every column of every table, and the run statuses, declared once.

Everything else is generated from these tables: the DuckDB DDL (runs.store.queries), the Arrow
schemas of the Parquet shards (runs.store.shards), the run keys a query may filter on and the
`--where` language's column types (runs.analysis.selection), and the columns of the probe frame
the analyses read. Ingest works by position (`INSERT … SELECT * FROM read_parquet`), so the
order here is the order on disk: append new columns at the end and bump SCHEMA_VERSION.
Imports nothing but the standard library and probes.schema (the worker path reads it).
"""

from __future__ import annotations

import json
from enum import StrEnum

from ssmscope.probes.schema import PROBE_COLUMNS, SCHEMA_VERSION

__all__ = [
    "BASE_READOUT",
    "DEFAULT_MODEL",
    "DERIVED_RUN_COLUMNS",
    "DUCKDB_TYPES",
    "EXCLUDED_STATUSES",
    "FILTER_COLUMNS",
    "FINISHED_STATUSES",
    "FLOAT_FILTER_COLUMNS",
    "FRAME_RUN_KEYS",
    "INT_FILTER_COLUMNS",
    "LEGACY_INIT_BASE",
    "LOSS_COLUMNS",
    "OPTIONAL_RUN_KEYS",
    "PARAMETERIZATION_KEYS",
    "PROBE_COLUMNS",
    "PROBE_FRAME_COLUMNS",
    "RUNS_RELATION",
    "RUN_COLUMNS",
    "RUN_KEY_TYPES",
    "SCHEMA_VERSION",
    "WHERE_COLUMNS",
    "WIDTH_KEYS",
    "RunStatus",
    "config_of_init_base",
    "ddl",
    "init_base_of",
    "model_of",
    "readout_of",
]


class RunStatus(StrEnum):
    """What became of a run. Stored as its string value."""

    COMPLETED = "completed"  # trained every step with finite loss and probes
    DIVERGED = "diverged"  # a loss or probe went non-finite; its data up to the last finite step is kept
    FAILED = "failed"  # raised, or its worker was lost; the error is kept, and resume retries it
    RUNNING = "running"  # a run watched by ssmscope.Monitor that is still training (its shard is rewritten)


FINISHED_STATUSES = (RunStatus.COMPLETED, RunStatus.DIVERGED)
"""Statuses resume never re-runs (a diverged run is a result, not a fault)."""
EXCLUDED_STATUSES = (RunStatus.DIVERGED, RunStatus.FAILED)
"""Statuses the fits leave out by default and the figures mark."""

# column → Arrow type alias (pyarrow.type_for_alias); the DuckDB type follows from DUCKDB_TYPES.
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
"""One row per run: its keys, its outcome, its full config (config_json) and its provenance."""
LOSS_COLUMNS: dict[str, str] = {
    "run_id": "string", "step": "int64", "train_loss": "float64", "eval_loss": "float64", "lr": "float64",
}
"""One row per (run, logged step)."""
PROBE_TABLE_COLUMNS: dict[str, str] = {"run_id": "string", **PROBE_COLUMNS}
"""One row per probe record (probes.schema), keyed by its run."""
TABLES: dict[str, dict[str, str]] = {"runs": RUN_COLUMNS, "probes": PROBE_TABLE_COLUMNS, "losses": LOSS_COLUMNS}

DUCKDB_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "float64": "DOUBLE", "bool": "BOOLEAN"}
_PRIMARY_KEYS = {"runs": "run_id"}
_RESERVED = {"group"}  # SQL keywords used as column names: quoted in DDL


def _column_ddl(table: str, name: str, arrow_type: str) -> str:
    quoted = f'"{name}"' if name in _RESERVED else name
    key = " PRIMARY KEY" if _PRIMARY_KEYS.get(table) == name else ""
    return f"{quoted} {DUCKDB_TYPES[arrow_type]}{key}"


def ddl() -> str:
    """CREATE TABLE IF NOT EXISTS for meta and every table above, in column order."""
    parts = ["CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);"]
    for table, columns in TABLES.items():
        body = ", ".join(_column_ddl(table, c, t) for c, t in columns.items())
        parts.append(f"CREATE TABLE IF NOT EXISTS {table} ({body});")
    return "\n".join(parts)


# --- what the analyses and queries see ---------------------------------------------------------
PARAMETERIZATION_KEYS = ("preset", "discretization", "optimizer")
"""One parameterization under test: a preset, discretised one way, trained by one optimizer. The analyses group
by it (a fit, an LR-transfer curve, a coincidence check never mixes two)."""
WIDTH_KEYS = ("n_u", "n_x")
"""The two widths: channels N_u and state size N_x."""
FRAME_RUN_KEYS = ("run_id", *PARAMETERIZATION_KEYS, "lr", "seed", *WIDTH_KEYS, "status")
"""Run keys every probe frame carries (joined onto each probe row)."""
LEGACY_INIT_BASE = "ssmscope-v0"
"""The init base of a run whose config names none: every run made before bases existed (ssm.bases.LEGACY_BASE;
tests/test_bases.py checks that the two agree — the store does not import the model package)."""
DEFAULT_MODEL = "mamba"
"""The model family of a run whose config names none: S6 (every run before Mamba-2; ssm.roles.Family.MAMBA)."""
BASE_READOUT = "base"
"""The readout treatment of a run whose config names none: as its init base ties it (every run before the choice)."""
DERIVED_RUN_COLUMNS: dict[str, tuple[str, str]] = {
    "init_base": ("string", "coalesce(CASE WHEN json_valid(config_json) THEN json_extract_string(config_json, "
                  f"'$.base') END, '{LEGACY_INIT_BASE}')"),
    "readout": ("string", "coalesce(CASE WHEN json_valid(config_json) THEN json_extract_string(config_json, "
                f"'$.readout') END, '{BASE_READOUT}')"),
    "model": ("string", "coalesce(CASE WHEN json_valid(config_json) THEN json_extract_string(config_json, "
              f"'$.model') END, '{DEFAULT_MODEL}')"),
}
"""Run keys computed from config_json in SQL: name → (Arrow type alias, expression over a runs row).

They have no column of their own, so every store has them, old ones included, without a migration; the
queries read runs through RUNS_RELATION, which adds them once per run (not once per probe row). init_base
separates runs of one preset drawn on different init bases (`grid.bases`), readout runs of one preset with its
readout tied, untied or untied and zero-initialised (`grid.readouts`): without them their fits merge. model is the
family (`train.model`: mamba or mamba2); a preset belongs to one family, so it never splits a fit cell, it labels
and filters runs."""


def _config_value(config_json: str | None, key: str, default: str) -> str:
    """`key` of a run's config_json as a string, or `default` when the config lacks it or is not JSON."""
    try:
        config = json.loads(config_json or "{}")
    except ValueError:
        return default
    value = config.get(key) if isinstance(config, dict) else None
    return str(value) if value is not None else default


def init_base_of(config_json: str | None) -> str:
    """A run's init base from its config_json, as DERIVED_RUN_COLUMNS derives it in SQL: the config's `base`, or
    LEGACY_INIT_BASE for a config without one (or not JSON). The Python side of the one derivation: library runs'
    frames (ssmscope.records) read their init_base through it."""
    return _config_value(config_json, "base", LEGACY_INIT_BASE)


def readout_of(config_json: str | None) -> str:
    """A run's readout treatment from its config_json, as DERIVED_RUN_COLUMNS derives it in SQL (BASE_READOUT
    when the config names none)."""
    return _config_value(config_json, "readout", BASE_READOUT)


def model_of(config_json: str | None) -> str:
    """A run's model family from its config_json, as DERIVED_RUN_COLUMNS derives it in SQL (DEFAULT_MODEL when the
    config names none: every S6 run)."""
    return _config_value(config_json, "model", DEFAULT_MODEL)


def config_of_init_base(init_base: str) -> str:
    """The smallest config_json whose derived init_base is `init_base` (a run known only by its frame's keys)."""
    return json.dumps({"base": init_base})


RUNS_RELATION = ("(SELECT *, " + ", ".join(f"{expr} AS {name}" for name, (_, expr) in DERIVED_RUN_COLUMNS.items())
                 + " FROM runs)")
"""The runs table with its derived keys, for FROM clauses (`FROM {RUNS_RELATION} r`)."""
OPTIONAL_RUN_KEYS = ("spec", "task", "dt_max", "init_base", "readout", "model")
"""Run keys the store adds to probe frames when present; they separate sweep configurations."""
PROBE_FRAME_COLUMNS = (*FRAME_RUN_KEYS, *PROBE_COLUMNS)
"""The columns an analysis may rely on in a probe frame (OPTIONAL_RUN_KEYS may come on top)."""
FILTER_COLUMNS = ("run_id", "spec", "preset", "discretization", "optimizer", "lr", "seed", "n_u", "n_x",
                  "status", "task", "dt_max", "n_layers", "init_base", "readout", "model")
"""Run columns the store's loaders filter on in SQL (whitelisted: never user text in a query)."""
WHERE_COLUMNS = (*PROBE_FRAME_COLUMNS, *OPTIONAL_RUN_KEYS)
"""Columns a `--where` clause may name."""
_ALL_TYPES = {**RUN_COLUMNS, **{k: t for k, (t, _) in DERIVED_RUN_COLUMNS.items()}, **PROBE_COLUMNS}
RUN_KEY_TYPES = {**RUN_COLUMNS, **{k: t for k, (t, _) in DERIVED_RUN_COLUMNS.items()}}
"""Arrow type alias of every run key a frame may carry: stored columns and derived ones."""


INT_FILTER_COLUMNS = frozenset(c for c in WHERE_COLUMNS if _ALL_TYPES.get(c, "").startswith("int"))
FLOAT_FILTER_COLUMNS = frozenset(c for c in WHERE_COLUMNS if _ALL_TYPES.get(c) == "float64")
assert set(FILTER_COLUMNS) <= set(RUN_KEY_TYPES), "FILTER_COLUMNS must name run columns or derived run keys"
