"""ssmscope: signal-propagation diagnostics for width scaling of selective state-space models.

The public API (see docs/library.md):

    ssmscope.coord_check(make_model, widths, batches, ssmscope.Grid(presets=..., lrs=..., seeds=...),
                         ssmscope.Training(steps=...))
                          train every width in memory → the probe frame (polars) a sweep would store
                          (return_runs=True: also the runs' rows and losses, ssmscope.Runs)
    ssmscope.fit_slopes(frame)      width-scaling exponents with CIs and predicted values
    ssmscope.coord_figure(frame)    the dashboard's coordinate-check figure (Plotly)
    ssmscope.store.save(frame, db, runs=runs)  put the runs where `ssmscope slopes` and the dashboard read them
    ssmscope.Monitor(model, db, probe_batch=..., every=k, labels=ssmscope.Labels(...))   the probes in your own loop
    ssmscope.HFMamba(config)        transformers' Mamba at any width (pip install 'ssmscope[hf]')
    ssmscope.HFMamba2(config)       transformers' Mamba-2 at any width (heads added at a fixed head_dim)
    ssmscope.apply_preset_hf, ssmscope.HFObserver, ssmscope.HFMamba2Observer, ssmscope.RowScaledAdam, ...
                                    the pieces underneath

The repository's packages live under this namespace:

    ssmscope.ssm      the model, its parameterizations (presets), the selective scans, adapters
    ssmscope.probes   the Observer: statistics from inside the scan, per layer and step
    ssmscope.runs     sweeps, the DuckDB store, the analyses (slopes, transfer), the CLI
    ssmscope.app      the Streamlit dashboard

and the notebook API is the namespace root itself, above all four (it imports downward only):

    ssmscope.coord    coord_check          ssmscope.monitor   Monitor
    ssmscope.recipe   Grid, Training, Labels (the small config objects of coord_check and Monitor)
    ssmscope.figure   coord_figure         ssmscope.store     save, load, ingest
    ssmscope.subjects the model families   ssmscope.records   run rows and probe frames of library runs

Importing `ssmscope` is cheap: every name above loads its module on first use (PEP 562), so
`import ssmscope` loads neither torch nor polars, duckdb, plotly or streamlit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "coord_check": "ssmscope.coord",
    "Grid": "ssmscope.recipe",
    "Training": "ssmscope.recipe",
    "Labels": "ssmscope.recipe",
    "Runs": "ssmscope.records",
    "fit_slopes": "ssmscope.runs.analysis.slopes.fit",
    "paper_slopes": "ssmscope.runs.analysis.slopes.paper",
    "coord_figure": "ssmscope.figure",
    "Monitor": "ssmscope.monitor",
    "HFMamba": "ssmscope.ssm.adapters.hf",
    "apply_preset_hf": "ssmscope.ssm.adapters.hf",
    "plan_hf": "ssmscope.ssm.adapters.hf",
    "RowScaledAdam": "ssmscope.ssm.adapters.optim",
    "RowScaledSGD": "ssmscope.ssm.adapters.optim",
    "build_row_optimizer": "ssmscope.ssm.adapters.optim",
    "HFObserver": "ssmscope.probes.hf",
    "HFMamba2": "ssmscope.ssm.adapters.hf_mamba2",
    "HFMamba2Observer": "ssmscope.probes.hf_mamba2",
    "Mamba2Config": "ssmscope.ssm.mamba2",
    "Mamba2LM": "ssmscope.ssm.mamba2",
    "Observer": "ssmscope.probes.observer",
    "MambaConfig": "ssmscope.ssm.config",
    "MambaLM": "ssmscope.ssm.model",
    "load_preset": "ssmscope.ssm.presets",
    "ConfigError": "ssmscope.ssm.errors",
}
"""Public name → the module defining it (loaded on first access)."""
_SUBMODULES = ("store",)
"""Public submodules, loaded on first access: ssmscope.store."""

__all__ = ["ConfigError", "Grid", "HFMamba", "HFMamba2", "HFMamba2Observer", "HFObserver", "Labels", "Mamba2Config",
           "Mamba2LM", "MambaConfig", "MambaLM", "Monitor", "Observer", "RowScaledAdam", "RowScaledSGD", "Runs",
           "Training", "__version__", "apply_preset_hf", "build_row_optimizer", "coord_check", "coord_figure",
           "fit_slopes", "load_preset", "paper_slopes", "plan_hf", "store"]
assert set(__all__) == {"__version__", *_EXPORTS, *_SUBMODULES}, "__all__ lists every public name once"

if TYPE_CHECKING:
    from ssmscope import store
    from ssmscope.coord import coord_check
    from ssmscope.figure import coord_figure
    from ssmscope.monitor import Monitor
    from ssmscope.probes.hf import HFObserver
    from ssmscope.probes.hf_mamba2 import HFMamba2Observer
    from ssmscope.probes.observer import Observer
    from ssmscope.recipe import Grid, Labels, Training
    from ssmscope.records import Runs
    from ssmscope.runs.analysis.slopes.fit import fit_slopes
    from ssmscope.runs.analysis.slopes.paper import paper_slopes
    from ssmscope.ssm.adapters.hf import HFMamba, apply_preset_hf, plan_hf
    from ssmscope.ssm.adapters.hf_mamba2 import HFMamba2
    from ssmscope.ssm.adapters.optim import RowScaledAdam, RowScaledSGD, build_row_optimizer
    from ssmscope.ssm.config import MambaConfig
    from ssmscope.ssm.errors import ConfigError
    from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM
    from ssmscope.ssm.model import MambaLM
    from ssmscope.ssm.presets import load_preset


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"ssmscope.{name}")
    else:
        raise AttributeError(f"module 'ssmscope' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
