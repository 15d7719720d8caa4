"""The one builder of a run's row in the store (runs.store.schema.RUN_COLUMNS).

Both the worker (a run that finished, diverged or raised) and the submitting side (a run whose
worker was lost before it wrote anything) record runs through `run_record`, so the row's keys
are written once. Imports the standard library and the schema only (the worker path).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ssmscope.runs.store.schema import SCHEMA_VERSION, RunStatus
from ssmscope.runs.sweeps.spec import RunConfig

RUN_KEYS_FROM_CONFIG = ("preset", "discretization", "optimizer", "lr", "seed", "n_u", "n_x", "n_layers", "steps",
                        "batch", "seq_len", "task", "fixed_batch", "dt_min", "dt_max")
"""RunConfig fields copied into their own columns (the rest lives in config_json)."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 (started_at / finished_at)."""
    return dt.datetime.now(dt.UTC).isoformat()


def config_json(cfg: dict[str, Any]) -> str:
    """A run config as canonical JSON (sorted keys)."""
    return json.dumps(cfg, sort_keys=True)


def run_record(cfg: RunConfig, *, spec: str, status: RunStatus | str, last_finite_step: int = -1,
               error: str = "", started_at: str | None = None, finished_at: str | None = None,
               wall_s: float | None = None, device: str = "", scan: str = "",
               provenance: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's row: keys from `cfg`, its outcome, timings, and provenance (torch_version,
    ssmscope_version, git_commit, hostname; empty when unknown, e.g. for a lost worker)."""
    finished = finished_at or now_iso()
    return {
        "run_id": cfg.run_id, "spec": spec, "status": RunStatus(status).value,
        "last_finite_step": last_finite_step, "error": error,
        **{k: getattr(cfg, k) for k in RUN_KEYS_FROM_CONFIG},
        "d_model": cfg.d_model, "config_json": config_json(cfg.to_dict()),
        "started_at": started_at or finished, "finished_at": finished, "wall_s": wall_s, "device": device,
        "scan": scan, **{k: "" for k in ("torch_version", "ssmscope_version", "git_commit", "hostname")},
        **(provenance or {}), "schema_version": SCHEMA_VERSION,
    }
