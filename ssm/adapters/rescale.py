"""A preset on a model ssmscope did not build: the part every transformers adapter shares.

An adapter (ssm.adapters.hf for Mamba, ssm.adapters.hf_mamba2 for Mamba-2) describes its model as an `Adaptee`:
every weight under its ssmscope name and role (`CanonicalParam`; a fused weight such as x_proj or Mamba-2's in_proj
read as row blocks, each a role of its own), its widths (N_u, N_x), and what it refuses. From that, this module

  - measures the user's init scale per role (`base_scales`: RMS of the role's entries, pooled over layers),
  - plans each weight's target init scale and learning rate under a preset (`plan`: the base scale times the
    preset's width factor; structural roles kept; forward multipliers refused: the user's modules have none),
  - rescales the model in place (`apply`) and returns optimizer groups (`preset_groups`: a fused weight is one
    group with a per-row `row_scale`, ssm.adapters.optim).

Nothing here imports transformers; the adapters reach their modules by duck typing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssmscope.ssm.config import Discretization, Optimizer
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import Preset, load_preset
from ssmscope.ssm.roles import MULTIPLIER_ROLES, STRUCTURAL_RULES, Family, Role


def backbone(model: nn.Module) -> nn.Module:
    """The backbone inside a transformers *ForCausalLM (or the backbone model itself)."""
    return getattr(model, "backbone", model)


@dataclass(frozen=True)
class CanonicalParam:
    """One ssmscope-named weight of a transformers model: a whole parameter or a row block of a fused one."""

    name: str  # ssmscope name, e.g. layers.0.mixer.x_proj.B.weight
    hf_name: str  # transformers name of the parameter holding it
    layer: int | None
    role: Role | None
    rows: slice | None  # None: the whole parameter

    def view(self, params: Mapping[str, Tensor]) -> Tensor:
        p = params[self.hf_name]
        return p if self.rows is None else p[self.rows]


def refuse_tied_or_uncovered(model: nn.Module, params: list[CanonicalParam], bias_default: str) -> None:
    """What no transformers Mamba can be put under a preset with, refused in one line naming the fix: a readout tied
    to the embedding (it could not follow its own rule), and parameters no role covers (biases; `bias_default` says
    whose default has none, e.g. "Mamba-2's")."""
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is backbone(model).embeddings.weight:
        raise ConfigError("the model ties lm_head to the embedding (tie_word_embeddings=True), so the readout "
                          "cannot follow its own rule; build the config with tie_word_embeddings=False")
    uncovered = [cp.hf_name for cp in params if cp.role is None]
    if uncovered:
        raise ConfigError(f"no role covers parameter(s) {', '.join(uncovered)}; build the config with "
                          f"use_bias=False ({bias_default} default) or extend ssm.roles.ROLE_OF_NAME")


@dataclass(frozen=True)
class Adaptee:
    """What the shared core needs of one kind of transformers model (see the module docstring)."""

    family: Family  # the presets' model family (ssm.roles.Family)
    check: Callable[[nn.Module], None]  # ConfigError, in one line, for what cannot be put under a preset
    params: Callable[[nn.Module], list[CanonicalParam]]  # every weight under its ssmscope name and role
    widths: Callable[[nn.Module], tuple[int, int]]  # (N_u, N_x)
    discretization: Discretization = Discretization.EULER  # transformers' Mamba scans: B̄ = Δ·B


@dataclass(frozen=True)
class HFParamPlan:
    """What a preset prescribes for one ssmscope-named weight of a transformers model."""

    name: str
    hf_name: str
    layer: int | None
    role: Role
    rows: slice | None
    init_scale: float | None  # target RMS; None for structural roles (kept as initialised)
    lr: float


def resolve_preset(preset: Preset | str) -> Preset:
    return preset if isinstance(preset, Preset) else load_preset(preset)


def _of_family(adaptee: Adaptee, preset: Preset | str) -> Preset:
    """The preset, refused when it is for another model family (its roles would not cover the model's)."""
    preset = resolve_preset(preset)
    if preset.family != adaptee.family:
        raise ConfigError(f"preset {preset.name} is for family {preset.family}, the model is {adaptee.family}; "
                          f"allowed: a {adaptee.family} preset")
    return preset


def base_scales(adaptee: Adaptee, model: nn.Module) -> dict[Role, float]:
    """RMS of each scalable role's entries, pooled over layers: the user's init scale at this width."""
    params = dict(model.named_parameters())
    sums: dict[Role, list[float]] = {}
    with torch.no_grad():
        for cp in adaptee.params(model):
            if cp.role is None or cp.role in STRUCTURAL_RULES:
                continue
            v = cp.view(params).detach().double()
            acc = sums.setdefault(cp.role, [0.0, 0])
            acc[0] += v.square().sum().item()
            acc[1] += v.numel()
    return {role: math.sqrt(s / n) for role, (s, n) in sums.items() if n}


def plan(adaptee: Adaptee, model: nn.Module, preset: Preset | str, optimizer: Optimizer | str, lr: float,
         base: nn.Module | Mapping[Role, float]) -> list[HFParamPlan]:
    """Target init scale and learning rate of every ssmscope-named weight (see the module docstring)."""
    adaptee.check(model)
    preset = _of_family(adaptee, preset)
    optimizer = Optimizer(optimizer)
    if isinstance(base, nn.Module):
        adaptee.check(base)
        got = adaptee.widths(base)
        if got != (preset.base_n_u, preset.base_n_x):
            raise ConfigError(f"the base model has N_u={got[0]}, N_x={got[1]}; preset {preset.name} has its base "
                              f"at N_u0={preset.base_n_u}, N_x0={preset.base_n_x}: build the base at that width")
        base = base_scales(adaptee, base)
    n_u, n_x = adaptee.widths(model)
    u_ratio, x_ratio = n_u / preset.base_n_u, n_x / preset.base_n_x
    rows = []
    for cp in adaptee.params(model):
        s = preset.scaling(cp.role, adaptee.discretization)
        if cp.role in MULTIPLIER_ROLES and s.mult.factor(u_ratio, x_ratio) != 1.0:
            raise ConfigError(f"preset {preset.name} gives role {cp.role} a forward multiplier ({s.mult}); the "
                              "transformers adapter leaves the user's modules unchanged and applies none: use a "
                              "preset without `mult`")
        scale = None
        if cp.role not in STRUCTURAL_RULES:
            if cp.role not in base:
                raise ConfigError(f"the base gives no scale for role {cp.role}")
            scale = base[cp.role] * s.init.factor(u_ratio, x_ratio)
        rows.append(HFParamPlan(cp.name, cp.hf_name, cp.layer, cp.role, cp.rows, scale,
                                lr * s.lr[optimizer.family].factor(u_ratio, x_ratio)))
    return rows


def apply(adaptee: Adaptee, model: nn.Module, preset: Preset | str, optimizer: Optimizer | str, lr: float, *,
          base: nn.Module | Mapping[Role, float] | None = None) -> list[dict[str, Any]]:
    """Rescale the user's init of `model` under `preset` (in place) and return optimizer groups.

    `base`: the user's model built at the preset's base width (N_u0, N_x0), or its `base_scales`; None when
    `model` itself is at the base width. A role the user initialised to zero stays zero; structural roles stay.
    """
    adaptee.check(model)
    preset = _of_family(adaptee, preset)
    if base is None:
        n_u, n_x = adaptee.widths(model)
        if (n_u, n_x) != (preset.base_n_u, preset.base_n_x):
            raise ConfigError(f"the model has N_u={n_u}, N_x={n_x} but preset {preset.name}'s base "
                              f"is N_u0={preset.base_n_u}, N_x0={preset.base_n_x}; pass base= the same model "
                              "built at the base width (the user's init there is the base)")
        base = base_scales(adaptee, model)
    plans = plan(adaptee, model, preset, optimizer, lr, base)
    current = base_scales(adaptee, model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for row in plans:
            if row.init_scale is None or current.get(row.role, 0.0) == 0.0:
                continue  # structural, or a role the user initialised to zero (zero stays zero)
            row_view = params[row.hf_name] if row.rows is None else params[row.hf_name][row.rows]
            row_view.mul_(row.init_scale / current[row.role])
    return preset_groups(model, plans)


def fused_name(row: HFParamPlan) -> str:
    """The ssmscope-style name of the fused parameter a row block belongs to: x_proj.dt.weight → x_proj.weight."""
    stem, _block, last = row.name.rsplit(".", 2)
    return f"{stem}.{last}"


def preset_groups(model: nn.Module, plans: list[HFParamPlan]) -> list[dict[str, Any]]:
    """Optimizer groups from a plan: one per weight; a fused weight one group whose `row_scale` gives each row its
    block's learning rate relative to the group's lr (that of its first block)."""
    params = dict(model.named_parameters())
    groups: list[dict[str, Any]] = []
    fused: dict[str, dict[str, Any]] = {}
    for row in plans:
        p = params[row.hf_name]
        if row.rows is None:
            groups.append({"params": [p], "lr": row.lr, "name": row.name, "role": str(row.role), "layer": row.layer})
            continue
        group = fused.get(row.hf_name)
        if group is None:
            name = fused_name(row)
            group = {"params": [p], "lr": row.lr, "row_scale": torch.ones(p.shape[0], dtype=torch.float64),
                     "name": name, "role": name.split(".")[-2], "layer": row.layer}
            fused[row.hf_name] = group
            groups.append(group)
        group["row_scale"][row.rows] = row.lr / group["lr"] if group["lr"] else 0.0
    return groups


__all__ = ["Adaptee", "CanonicalParam", "HFParamPlan", "apply", "backbone", "base_scales", "fused_name", "plan",
           "preset_groups", "resolve_preset"]
