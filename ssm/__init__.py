"""ssm: Mamba-style models whose every parameter follows a declared width parameterization.

Knows nothing of probes or storage. Main entry points:
  MambaConfig, MambaLM           — the model (ssm.config, ssm.model)
  load_preset, apply_preset      — parameterizations as data (ssm.presets)
  selective_scan, StateProbe     — the scan and its latent-state side channel (ssm.scan)
"""

from ssm.config import Discretization, MambaConfig, ScanBackend
from ssm.errors import ConfigError
from ssm.model import MambaLM
from ssm.presets import Optimizer, apply_preset, build_optimizer, load_preset, plan
from ssm.scan import ScanInputs, StateProbe, selective_scan

__all__ = [
    "ConfigError",
    "Discretization",
    "MambaConfig",
    "MambaLM",
    "Optimizer",
    "ScanBackend",
    "ScanInputs",
    "StateProbe",
    "apply_preset",
    "build_optimizer",
    "load_preset",
    "plan",
    "selective_scan",
]
