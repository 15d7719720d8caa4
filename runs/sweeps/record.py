"""The one builder of a run's row in the store (runs.store.schema.RUN_COLUMNS), and what every row carries.

Every run is recorded through `run_row`: the sweep worker's (a run that finished, diverged or raised)
and the submitting side's (a run whose worker was lost before it wrote anything) through `run_record`,
which reads the keys off a RunConfig; coord_check's and Monitor's (ssmscope.coord, ssmscope.monitor)
directly. `now_iso` times them, `provenance` says what made them, `loss_rows` shapes their losses.
Imports the standard library, the schema and the spec only (the worker path); torch when asked for
its version.
"""

from __future__ import annotations

import datetime as dt
import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

from ssmscope.runs.store.schema import LOSS_COLUMNS, RUN_COLUMNS, SCHEMA_VERSION, RunStatus
from ssmscope.runs.sweeps.ids import canonical_json
from ssmscope.runs.sweeps.spec import RunConfig

RUN_KEYS_FROM_CONFIG = ("preset", "discretization", "optimizer", "lr", "seed", "n_u", "n_x", "n_layers", "steps",
                        "batch", "seq_len", "task", "fixed_batch", "dt_min", "dt_max")
"""RunConfig fields copied into their own columns (the rest lives in config_json)."""

PROVENANCE_KEYS = ("torch_version", "ssmscope_version", "git_commit", "hostname")
"""The columns that say what made a run (empty when unknown, e.g. for a lost worker)."""

_EMPTY = {"string": "", "int64": None, "int32": None, "float64": None, "bool": None}
"""The value of a column no one set, by its Arrow type: '' for text, null otherwise."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 (started_at / finished_at)."""
    return dt.datetime.now(dt.UTC).isoformat()


@functools.cache
def _git_commit() -> str:
    """The short commit of the checkout ssmscope runs from; '' when it is not a git checkout (an install)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ssmscope")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def provenance() -> dict[str, str]:
    """torch's and ssmscope's versions, the git commit of the code (empty outside a checkout) and the host."""
    import torch

    return {"torch_version": torch.__version__, "ssmscope_version": _version(), "git_commit": _git_commit(),
            "hostname": platform.node()}


def run_row(**values: Any) -> dict[str, Any]:
    """A run's row: every RUN_COLUMNS key, from `values` (an unknown key is a KeyError, a missing one empty), the
    status as its string and the schema version this code writes."""
    unknown = set(values) - set(RUN_COLUMNS)
    if unknown:
        raise KeyError(f"not run columns: {sorted(unknown)}")
    row = {c: values.get(c, _EMPTY[t]) for c, t in RUN_COLUMNS.items()}
    if row["status"]:
        row["status"] = RunStatus(row["status"]).value
    row["schema_version"] = SCHEMA_VERSION
    return row


def run_record(cfg: RunConfig, *, spec: str, status: RunStatus | str, last_finite_step: int = -1,
               error: str = "", started_at: str | None = None, finished_at: str | None = None,
               wall_s: float | None = None, device: str = "", scan: str = "",
               provenance: dict[str, str] | None = None) -> dict[str, Any]:
    """A sweep run's row (run_row): keys from `cfg`, its outcome, timings, and provenance (empty when unknown)."""
    finished = finished_at or now_iso()
    return run_row(
        run_id=cfg.run_id, spec=spec, status=status, last_finite_step=last_finite_step, error=error,
        **{k: getattr(cfg, k) for k in RUN_KEYS_FROM_CONFIG}, d_model=cfg.d_model,
        config_json=canonical_json(cfg.to_dict()), started_at=started_at or finished, finished_at=finished,
        wall_s=wall_s, device=device, scan=scan, **{**dict.fromkeys(PROVENANCE_KEYS, ""), **(provenance or {})})


def loss_rows(losses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loss rows with exactly the loss columns (run_id is filled by the shard writer)."""
    return [{c: r.get(c) for c in LOSS_COLUMNS if c != "run_id"} for r in losses]
