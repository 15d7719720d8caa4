"""The recipe of a coordinate check, as two small frozen objects, each checked when it is made.

    Grid      what varies between runs: presets × discretisations × learning rates × seeds, one optimizer
    Training  what every run shares: steps, logging, weight decay, which probes, the scan, the dtype

    ssmscope.coord_check(cfg, [32, 64, 128], batch, Grid(presets=("sp", "mup-ssm"), lrs=0.01, seeds=range(2)),
                         Training(steps=10))

A problem is one ConfigError naming the field, what it got and what is allowed, raised when the object is
made — before any model is built. Values are normalised on the way in (a single learning rate or preset
becomes a one-element tuple, numpy numbers become Python ones), so two equal recipes compare equal.
`Training.schedule` is the one loop's own schedule (runs.sweeps.loop.Schedule), as a sweep's worker builds it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssmscope.runs.sweeps.loop import Schedule
from ssmscope.ssm.config import Discretization, ScanBackend
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import Optimizer

MAX_STEPS = 1_000_000
"""The most optimizer steps (and the largest log_every) coord_check takes: a coordinate check needs tens, and its
records stay in memory."""
MAX_SEED = 2**63 - 1
"""Seeds go to torch.manual_seed, which takes [0, 2**63 − 1] as a seed here (larger ones raise inside torch)."""
SUPPORTED_SHOWN = 60
"""A refused value is quoted up to this many characters."""


def shown(value: Any) -> str:
    """repr(value), cut to SUPPORTED_SHOWN characters (a refusal stays one short line)."""
    text = repr(value)
    return text if len(text) <= SUPPORTED_SHOWN else text[:SUPPORTED_SHOWN] + "…"


def _positive(key: str, value: Any, *, zero: bool = False) -> int:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_STEPS:
        what = "a non-negative" if zero else "a positive"
        raise ConfigError(f"{key}={shown(value)}; allowed: {what} int up to {MAX_STEPS:,}")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={shown(value)}; allowed: True or False")
    return value


def _is_number(value: Any) -> bool:
    """A real number that is not a bool (Python or numpy ints and floats; not strings, tensors, lists)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _names(key: str, value: Any, *, optional: bool = False) -> tuple[Any, ...]:
    """One name (str or path) or a non-empty sequence of them; None (when optional) stays None."""
    if value is None and optional:
        return (None,)
    values = [value] if isinstance(value, str | Path) else list(value) if isinstance(value, Iterable) else [value]
    if not values:
        raise ConfigError(f"{key}=[]; give at least one")
    for v in values:
        if not isinstance(v, str | Path):
            raise ConfigError(f"{key}: {shown(v)}; allowed: a name or a TOML path (a str)")
    return tuple(str(v) for v in values)


def _lrs(lrs: Any) -> tuple[float, ...]:
    """The learning rates: one positive finite number, or a non-empty list of distinct ones."""
    allowed = "allowed: a positive finite number, or a non-empty list of them (e.g. 0.01 or [0.003, 0.01])"
    if _is_number(lrs):
        values = [lrs]
    elif isinstance(lrs, str | bytes | Mapping) or not isinstance(lrs, Iterable):  # '0.01' is not 4 characters
        raise ConfigError(f"lrs={shown(lrs)} is a {type(lrs).__name__}; {allowed}")
    else:
        values = list(lrs)
    if not values:
        raise ConfigError(f"lrs=[]; {allowed}")
    for v in values:
        if not _is_number(v) or not (math.isfinite(float(v)) and float(v) > 0):
            raise ConfigError(f"lrs={shown(v)}; {allowed}")
    if len(set(map(float, values))) != len(values):
        raise ConfigError(f"lrs={shown(lrs)} repeats a learning rate")
    return tuple(float(v) for v in values)


def _seeds(seeds: Any) -> tuple[int, ...]:
    """The seeds: a non-empty list (or range) of distinct ints in [0, MAX_SEED]."""
    allowed = "allowed: a non-empty list of distinct ints in [0, 2**63 - 1], e.g. [0] or range(3)"
    if isinstance(seeds, str | bytes | Mapping) or not isinstance(seeds, Iterable):
        raise ConfigError(f"seeds={shown(seeds)}; {allowed}")
    values = list(seeds)
    if not values:
        raise ConfigError(f"seeds=[]; {allowed}")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED:
            raise ConfigError(f"seeds: {shown(s)}; {allowed}")
    if len(set(values)) != len(values):
        raise ConfigError(f"seeds={shown(seeds)} repeats a seed")
    return tuple(int(s) for s in values)


def _disc(value: str | None) -> Discretization | None:
    if value is None:
        return None
    try:
        return Discretization(value)
    except ValueError:
        raise ConfigError(f"discretization={value!r}; allowed: {', '.join(d.value for d in Discretization)}") from None


@dataclass(frozen=True)
class Grid:
    """What varies between the runs of a coordinate check (each width runs every combination).

    presets: names (sp, mup, mup-ssm) or TOML paths. discretizations: zoh | euler for ssmscope's model (None: the
    model's own; transformers' scan is Euler). optimizer: sgd | adam | adamw. lrs: the base learning rate(s) at the
    preset's base width. seeds: one run per seed.
    """

    presets: str | Sequence[str] = ("sp", "mup-ssm")
    discretizations: str | Sequence[str] | None = None
    optimizer: str = "adam"
    lrs: float | Sequence[float] = 1e-2
    seeds: Sequence[int] = (0,)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "presets", _names("presets", self.presets))
        discs = _names("discretizations", self.discretizations, optional=True)
        set_(self, "discretizations", tuple(_disc(d) for d in discs))
        try:
            set_(self, "optimizer", Optimizer(self.optimizer).value)
        except ValueError:
            raise ConfigError(f"optimizer={self.optimizer!r}; allowed: "
                              f"{', '.join(o.value for o in Optimizer)}") from None
        set_(self, "lrs", _lrs(self.lrs))
        set_(self, "seeds", _seeds(self.seeds))


@dataclass(frozen=True)
class Training:
    """What every run of a coordinate check shares.

    steps: optimizer steps (probes at step s see the model after s updates). log_every: probe every this many
    steps (and at the last). weight_decay: the optimizer's. grads: record ∂L/∂y and ∂L/∂x. state_prev: Δx against
    the previous logged step too. scan: ssmscope's scan backend (auto | reference | fast | compiled | triton).
    dtype: the models' precision (None: as built, float32). eval_every: the held-out loss of `eval_batches` every
    this many steps (0: never). group_probes: per-parameter-group update records (ssmscope's MambaLM and Mamba2LM).
    """

    steps: int = 10
    log_every: int = 1
    weight_decay: float = 0.0
    grads: bool = True
    state_prev: bool = False
    scan: str = "auto"
    dtype: torch.dtype | None = None
    eval_every: int = 0
    group_probes: bool = False

    def __post_init__(self) -> None:
        _positive("steps", self.steps)
        _positive("log_every", self.log_every)
        _positive("eval_every", self.eval_every, zero=True)
        if not _is_number(self.weight_decay) or not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay={shown(self.weight_decay)}; allowed: a finite number ≥ 0")
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        for key in ("grads", "state_prev", "group_probes"):
            _flag(key, getattr(self, key))
        try:
            object.__setattr__(self, "scan", ScanBackend(self.scan).value)
        except ValueError:
            raise ConfigError(f"scan={self.scan!r}; allowed: {', '.join(b.value for b in ScanBackend)}") from None
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise ConfigError(f"dtype={shown(self.dtype)}; allowed: None or a torch dtype (torch.float64, …)")

    @property
    def schedule(self) -> Schedule:
        """When the one loop probes and evaluates (runs.sweeps.loop)."""
        return Schedule(steps=self.steps, log_every=self.log_every, eval_every=self.eval_every,
                        group_probes=self.group_probes)


@dataclass(frozen=True)
class Labels:
    """What a Monitor stores as its run's keys (it applies no preset: the model trains as the user set it up).

    name: the run's `spec` (the dashboard's sweep selector); preset, optimizer, lr, seed, task: labels.
    """

    name: str = "monitor"
    preset: str = "custom"
    optimizer: str = ""
    lr: float | None = None
    seed: int = 0
    task: str = "custom"

    def __post_init__(self) -> None:
        for key in ("name", "preset", "optimizer", "task"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key}={shown(getattr(self, key))}; allowed: a str")
        if self.lr is not None and not (_is_number(self.lr) and math.isfinite(self.lr)):
            raise ConfigError(f"lr={shown(self.lr)}; allowed: None or a finite number")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed={shown(self.seed)}; allowed: an int in [0, 2**63 - 1]")
