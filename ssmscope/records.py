"""Runs made outside a sweep (coord_check, Monitor) as a probe frame.

Their rows come from the one builder (runs.sweeps.record.run_row); `probe_frame` turns
probe records plus their runs into the frame the store's loader returns (runs.store.db
.load_probe_frame: FRAME_RUN_KEYS, OPTIONAL_RUN_KEYS, then the probe columns, same types), so that
the analyses, the figures and `ssmscope.store.save` take it as they take a sweep's.

A probe frame carries only run keys. The rest of a run — its full row (config, timings, provenance) and
its losses — is handed back explicitly, as `Runs` (coord_check(..., return_runs=True)), and handed on to
`ssmscope.store.save(frame, db, runs=...)`. Nothing is remembered in the process: the same frame saves
the same way whatever ran before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ssmscope.runs.store.schema import (
    FRAME_RUN_KEYS,
    OPTIONAL_RUN_KEYS,
    PROBE_COLUMNS,
    RUN_KEY_TYPES,
    init_base_of,
    model_of,
    readout_of,
)

POLARS_TYPES = {"string": pl.String, "int64": pl.Int64, "int32": pl.Int32, "float64": pl.Float64, "bool": pl.Boolean}
"""Arrow type alias of runs.store.schema → the polars type DuckDB hands back for it."""

FRAME_SCHEMA: dict[str, pl.DataType] = {
    **{k: POLARS_TYPES[RUN_KEY_TYPES[k]] for k in (*FRAME_RUN_KEYS, *OPTIONAL_RUN_KEYS)},
    **{k: POLARS_TYPES[t] for k, t in PROBE_COLUMNS.items()},
}
"""Columns and types of a probe frame, in the store loader's order."""


@dataclass(frozen=True)
class RunData:
    """One run's row (RUN_COLUMNS) and its loss rows (LOSS_COLUMNS without run_id)."""

    row: dict[str, Any]
    losses: list[dict[str, Any]] = field(default_factory=list)


USER_BASE = "user"
"""init_base of runs on a user's own initialisation (transformers' Mamba under the adapter, a Monitor's model)."""

class Runs(Mapping[str, RunData]):
    """Run id → RunData of the runs of one or more coord_checks: read-only; `a | b` joins two (b wins a clash)."""

    def __init__(self, by_id: Mapping[str, RunData] | None = None) -> None:
        self._by_id: dict[str, RunData] = dict(by_id or {})

    def __getitem__(self, run_id: str) -> RunData:
        return self._by_id[run_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __or__(self, other: Mapping[str, RunData]) -> Runs:
        return Runs({**self._by_id, **other})

    def __repr__(self) -> str:
        return f"Runs({len(self)} run{'s' if len(self) != 1 else ''})"

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every run's row, in the order the runs were made."""
        return [d.row for d in self._by_id.values()]


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
        return init_base_of(run.get("config_json"))
    if key == "readout":
        return readout_of(run.get("config_json"))
    if key == "model":
        return model_of(run.get("config_json"))
    return run[key]
