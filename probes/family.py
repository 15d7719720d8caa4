"""A model family: what coord_check needs of a kind of model to train and observe it at any width.

One small protocol, `ModelFamily`, with two implementations in ssmscope.subjects (ssmscope's MambaLM;
transformers' Mamba under the adapter) — a new family is one module implementing it (tests/toy_family.py
is one: a one-layer model on ssmscope's own mixer). A family

  - builds a `Subject` at a width (N_u, N_x) under a `Setting` (preset, discretisation, optimizer, lr,
    seed, …): the model with its parameters initialised and its optimizer groups set by the preset (whose
    rules find each parameter's role by its name, ssm.roles), and an observer tapping its S6 mixers
    (probes.Observer reads `model.mixers`; probes.hf.HFObserver transformers' own);
  - says which discretisation its scan uses (`discretizations`), its depth and vocabulary at a width without
    building it (`shape_at`: the memory estimate and the token-id check), the init base a run's exponents
    act on (`init_base`), whether its observer records per-group updates (`group_probes`), and what it is
    (`describe`, stored with every run and hashed into its id).

This sits in probes (it names observers); ssm knows nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ssmscope.probes.observer import Observer
from ssmscope.ssm.config import Discretization
from ssmscope.ssm.presets import Preset


@dataclass(frozen=True)
class Setting:
    """One run's choices besides the width."""

    preset: Preset
    discretization: Discretization
    optimizer: str
    lr: float
    seed: int
    weight_decay: float
    grads: bool
    state_prev: bool
    scan: str


@dataclass
class Subject:
    """One model ready to train and observe, with what its run row records of it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    observer: Observer
    discretization: Discretization
    n_layers: int
    d_model: int
    dt_min: float
    dt_max: float


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate and the token-id check need to know of a family's model at one width."""

    d_model: int
    n_layers: int
    vocab_size: int


@runtime_checkable
class ModelFamily(Protocol):
    """A kind of model coord_check trains at any width (module docstring)."""

    group_probes: bool
    """Whether its observer records per-group updates (probes.Observer.group_update_records)."""

    def build(self, n_u: int, n_x: int, setting: Setting, device: torch.device,
              dtype: torch.dtype | None) -> Subject:
        """The model at (N_u, N_x), seeded by setting.seed, under setting.preset, with optimizer and observer."""
        ...

    def discretizations(self, requested: Discretization | None) -> Discretization:
        """The discretisation a run uses when `requested` (None: the family's own); ConfigError if it cannot."""
        ...

    def shape_at(self, n_u: int, n_x: int) -> ModelShape | None:
        """The model's d_model, depth and vocabulary at a width, known without building it (None: unknown)."""
        ...

    def init_base(self, preset: Preset) -> str:
        """The init base a run's exponents act on (stored as the run's `base`, the store's init_base key)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the family is, as JSON-able values (stored with each run, and hashed into its id)."""
        ...
