"""ssm: Mamba-style models whose every parameter follows a declared width parameterization.

Knows nothing of probes or storage. Main entry points:
  MambaConfig, MambaLM           — the model (ssm.config, ssm.model)
  Mamba2Config, Mamba2LM         — Mamba-2 (SSD) (ssm.mamba2); build_model(cfg) builds either family
  load_preset                    — parameterizations as data, torch-free (ssm.presets)
  apply_preset, build_optimizer  — a preset applied to a model and its optimizer (ssm.apply)
  load_base                      — init bases: Mamba's, transformers' and the legacy constants (ssm.bases)
  selective_scan, StateProbe     — the scan and its latent-state side channel (ssm.scan)

Names are loaded on first use (PEP 562), so `ssm.presets`, `ssm.predictions` or `ssm.errors` can be imported
(by the analyses and the dashboard) without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ConfigError": "ssmscope.ssm.errors",
    "load_base": "ssmscope.ssm.bases",
    "Discretization": "ssmscope.ssm.config",
    "MambaConfig": "ssmscope.ssm.config",
    "ScanBackend": "ssmscope.ssm.config",
    "MambaLM": "ssmscope.ssm.model",
    "Mamba2Config": "ssmscope.ssm.mamba2",
    "Mamba2LM": "ssmscope.ssm.mamba2",
    "build_model": "ssmscope.ssm.mamba2",
    "Optimizer": "ssmscope.ssm.config",
    "apply_preset": "ssmscope.ssm.apply",
    "build_optimizer": "ssmscope.ssm.apply",
    "load_preset": "ssmscope.ssm.presets",
    "original_preset": "ssmscope.ssm.presets",
    "plan": "ssmscope.ssm.apply",
    "ScanInputs": "ssmscope.ssm.scan.types",
    "StateProbe": "ssmscope.ssm.scan.types",
    "selective_scan": "ssmscope.ssm.scan.dispatch",
}
__all__ = [
    "ConfigError",
    "Discretization",
    "Mamba2Config",
    "Mamba2LM",
    "MambaConfig",
    "MambaLM",
    "Optimizer",
    "ScanBackend",
    "ScanInputs",
    "StateProbe",
    "apply_preset",
    "build_model",
    "build_optimizer",
    "load_base",
    "load_preset",
    "original_preset",
    "plan",
    "selective_scan",
]

if TYPE_CHECKING:
    from ssmscope.ssm.apply import apply_preset, build_optimizer, plan
    from ssmscope.ssm.bases import load_base
    from ssmscope.ssm.config import Discretization, MambaConfig, Optimizer, ScanBackend
    from ssmscope.ssm.errors import ConfigError
    from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM, build_model
    from ssmscope.ssm.model import MambaLM
    from ssmscope.ssm.presets import load_preset, original_preset
    from ssmscope.ssm.scan.dispatch import selective_scan
    from ssmscope.ssm.scan.types import ScanInputs, StateProbe


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssmscope.ssm' has no attribute {name!r}")
