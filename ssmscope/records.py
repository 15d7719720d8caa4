"""Runs made outside a sweep (coord_check, Monitor) as the store's rows and as a probe frame.

`run_row` builds a run's row with every column of runs.store.schema.RUN_COLUMNS; `probe_frame` turns
probe records plus their runs into the frame the store's loader returns (runs.store.db
.load_probe_frame: FRAME_RUN_KEYS, OPTIONAL_RUN_KEYS, then the probe columns, same types), so that
the analyses, the figures and `ssmscope.store.save` take it as they take a sweep's.

`RUNS` remembers, per run id, the row and the losses of every run made in this process: a probe
frame carries only run keys, and `save` finds the rest here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ssmscope.probes.schema import PROBE_COLUMNS
from ssmscope.runs.store.schema import (
    FRAME_RUN_KEYS,
    LEGACY_INIT_BASE,
    LOSS_COLUMNS,
    OPTIONAL_RUN_KEYS,
    RUN_COLUMNS,
    RUN_KEY_TYPES,
    SCHEMA_VERSION,
)

POLARS_TYPES = {"string": pl.String, "int64": pl.Int64, "int32": pl.Int32, "float64": pl.Float64, "bool": pl.Boolean}
"""Arrow type alias of runs.store.schema → the polars type DuckDB hands back for it."""

FRAME_SCHEMA: dict[str, pl.DataType] = {
    **{k: POLARS_TYPES[RUN_KEY_TYPES[k]] for k in (*FRAME_RUN_KEYS, *OPTIONAL_RUN_KEYS)},
    **{k: POLARS_TYPES[t] for k, t in PROBE_COLUMNS.items()},
}
"""Columns and types of a probe frame, in the store loader's order."""


@dataclass
class RunData:
    """One run's row (RUN_COLUMNS) and its loss rows (LOSS_COLUMNS without run_id)."""

    row: dict[str, Any]
    losses: list[dict[str, Any]] = field(default_factory=list)


USER_BASE = "user"
"""init_base of runs on a user's own initialisation (transformers' Mamba under the adapter, a Monitor's model)."""

RUNS: dict[str, RunData] = {}
"""Run id → RunData of every run this process made (see the module docstring)."""


def now_iso() -> str:
    """The current UTC time, ISO 8601 (started_at / finished_at)."""
    return dt.datetime.now(dt.UTC).isoformat()


def run_id_of(description: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of a run description's canonical JSON (as sweep run ids)."""
    blob = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def json_of(description: dict[str, Any]) -> str:
    """A run description as canonical JSON (config_json)."""
    return json.dumps(description, sort_keys=True, default=str)


def provenance() -> dict[str, str]:
    """torch and ssmscope versions and the host (git_commit: empty, a library run has no checkout)."""
    import torch

    try:
        from importlib.metadata import version

        ours = version("ssmscope")
    except Exception:  # running from a checkout without an install
        ours = "0+unknown"
    return {"torch_version": torch.__version__, "ssmscope_version": ours, "git_commit": "",
            "hostname": platform.node()}


def run_row(**values: Any) -> dict[str, Any]:
    """A run's row: every RUN_COLUMNS key, from `values` (unknown keys are an error, missing ones empty)."""
    unknown = set(values) - set(RUN_COLUMNS)
    if unknown:
        raise KeyError(f"not run columns: {sorted(unknown)}")
    empty = {"string": "", "int64": None, "float64": None, "bool": None}
    row = {c: values.get(c, empty[t]) for c, t in RUN_COLUMNS.items()}
    row["schema_version"] = SCHEMA_VERSION
    return row


def probe_frame(records: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> pl.DataFrame:
    """Probe records (each with a run_id) joined with their runs' keys, as the store's loader returns them."""
    keys = (*FRAME_RUN_KEYS, *OPTIONAL_RUN_KEYS)
    columns: dict[str, list[Any]] = {c: [] for c in FRAME_SCHEMA}
    for rec in records:
        run = runs[rec["run_id"]]
        for k in keys:
            columns[k].append(run_key(run, k))
        for k in PROBE_COLUMNS:
            columns[k].append(rec[k])
    return pl.DataFrame(columns, schema=FRAME_SCHEMA)


def run_key(run: dict[str, Any], key: str) -> Any:
    """A run key of a run's row, derived ones (runs.store.schema.DERIVED_RUN_COLUMNS) as the store derives them."""
    if key == "init_base":
        return json.loads(run.get("config_json") or "{}").get("base", LEGACY_INIT_BASE)
    return run[key]


def loss_rows(losses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loss rows with exactly the loss columns (run_id is filled by the shard writer)."""
    return [{c: r.get(c) for c in LOSS_COLUMNS if c != "run_id"} for r in losses]
