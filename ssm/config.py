"""Model configuration and the choices shared by the whole package.

Symbols (one legend for all of ssmscope): B batch, L length, D d_model, E expand,
ED = N_u = d_inner, N = N_x = d_state, R dt_rank, W conv width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from ssmscope.ssm.errors import ConfigError


class Discretization(StrEnum):
    """How the continuous (A, B) become the discrete (Ā, B̄) for a step Δ."""

    ZOH = "zoh"  # Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A · B
    EULER = "euler"  # Ā = exp(ΔA), B̄ = Δ·B (what Mamba's reference code does)


class Readout(StrEnum):
    """How a run's readout is treated: as its init base says, tied to the embedding, untied (its own matrix under
    the preset's readout rule), or untied and zero-initialised. Sweeps choose it per run (grid.readouts)."""

    BASE = "base"
    TIED = "tied"
    UNTIED = "untied"
    UNTIED_ZERO = "untied-zero"

    @property
    def tie(self) -> bool | None:
        """MambaConfig.tie_readout for this choice (None: the base decides)."""
        return None if self == Readout.BASE else self == Readout.TIED

    @property
    def zero(self) -> bool:
        """MambaConfig.zero_readout for this choice."""
        return self == Readout.UNTIED_ZERO


class ScanBackend(StrEnum):
    """Which implementation of the selective scan runs the recurrence."""

    AUTO = "auto"  # triton on CUDA tensors when importable; compiled on CPU when it builds; else fast
    REFERENCE = "reference"  # sequential loop, the ground truth (any dtype)
    FAST = "fast"  # chunked torch scan with a hand-written backward (CPU and GPU)
    TRITON = "triton"  # GPU kernel (the Triton issue)
    COMPILED = "compiled"  # C kernel built on first use (CPU; docs/compiled-scan.md)


class OptimizerFamily(StrEnum):
    """The learning-rate column a preset gives per role ([roles.<role>] lr = {sgd = …, adam = …})."""

    SGD = "sgd"
    ADAM = "adam"


class Optimizer(StrEnum):
    """The optimizers a run may use; each reads its learning rates from one family of the preset."""

    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"  # decoupled weight decay; its learning rates scale as Adam's

    @property
    def family(self) -> OptimizerFamily:
        """The preset column this optimizer's learning rates come from."""
        return OptimizerFamily.SGD if self == Optimizer.SGD else OptimizerFamily.ADAM


FAMILY_OF_OPTIMIZER: dict[str, str] = {o.value: o.family.value for o in Optimizer}
"""Optimizer name → its family's name (Optimizer.family, as plain strings for frames and TOML tables);
an optimizer not listed has no family (no learning-rate rule, no prediction)."""


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r}; allowed: a positive integer")


@dataclass(frozen=True, kw_only=True)
class MambaConfig:
    """A Mamba language model: embedding → n_layers × (RMSNorm → Mamba block, residual) → norm → readout
    (the embedding's matrix when tied)."""

    d_model: int = 16
    """D, the residual-stream width; N_u = expand · d_model."""
    n_layers: int = 3
    """Number of Mamba blocks (one S6 each); 3 as in the paper's figure."""
    d_state: int = 16
    """N_x, the latent state size per channel (Mamba's default 16)."""
    expand: int = 2
    """E, N_u / d_model (Mamba's default 2)."""
    d_conv: int = 4
    """W, causal depthwise convolution width (Mamba's default 4)."""
    dt_rank: int | str = "auto"
    """R, rank of the Δ projection; "auto" = ceil(d_model / 16) as in Mamba."""
    dt_min: float = 1e-3
    """Lower end of the log-uniform Δ at initialisation."""
    dt_max: float = 0.1
    """Upper end of the log-uniform Δ at initialisation."""
    dt_init_floor: float = 1e-4
    """Floor applied to the initial Δ before inverting the softplus."""
    discretization: Discretization = Discretization.ZOH
    """ZOH or Euler (see Discretization)."""
    vocab_size: int = 256
    """Number of token ids (256 = bytes)."""
    scan: ScanBackend = ScanBackend.AUTO
    """Scan implementation; a performance choice, the numbers agree to fp tolerance."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_readout: bool | None = None
    """Readout shares the embedding matrix (Mamba's and transformers' default); None: as the
    init base says (ssm.apply.apply_preset ties or unties the model before initialising it)."""
    zero_readout: bool = False
    """An untied readout starts at zero (what µP's reference code and ArchScale do when untied); its learning
    rate and multiplier stay the preset's. Refused with a tied readout (the matrix is the embedding's)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored with the config (never read by the model)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "d_state", "expand", "d_conv", "vocab_size"):
            _positive_int(name, getattr(self, name))
        if self.dt_rank != "auto":
            _positive_int("dt_rank", self.dt_rank)
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(
                f"dt_min={self.dt_min!r}, dt_max={self.dt_max!r}; allowed: 0 < dt_min <= dt_max"
            )
        if self.tie_readout is not None and not isinstance(self.tie_readout, bool):
            raise ConfigError(f"tie_readout={self.tie_readout!r}; allowed: true, false or unset (the base decides)")
        if not isinstance(self.zero_readout, bool) or (self.zero_readout and self.tie_readout is not False):
            raise ConfigError(f"zero_readout={self.zero_readout!r} with tie_readout={self.tie_readout!r}; a zero "
                              "readout needs tie_readout=False (a tied readout is the embedding's matrix)")
        if self.dt_init_floor <= 0:
            raise ConfigError(f"dt_init_floor={self.dt_init_floor!r}; allowed: > 0")
        try:
            object.__setattr__(self, "discretization", Discretization(self.discretization))
        except ValueError:
            allowed = ", ".join(d.value for d in Discretization)
            raise ConfigError(
                f"discretization={self.discretization!r}; allowed: {allowed}"
            ) from None
        try:
            object.__setattr__(self, "scan", ScanBackend(self.scan))
        except ValueError:
            allowed = ", ".join(b.value for b in ScanBackend)
            raise ConfigError(f"scan={self.scan!r}; allowed: {allowed}") from None

    @property
    def d_inner(self) -> int:
        """N_u = ED, the number of S6 channels."""
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """R, the resolved dt_rank."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, stored with every run."""
        d = asdict(self)
        d["discretization"] = str(self.discretization)
        d["scan"] = str(self.scan)
        return d
