"""Applying a preset to a torch model: the plan per parameter, the draws, the multipliers, the optimizer.

The preset layer (ssm.presets, ssm.bases, ssm.exponents: tables, validation, exponent arithmetic) is
torch-free, so that the analyses, the solver and the dashboard read presets without loading torch; this
module is where a preset meets parameters. `plan` says what every parameter of a model gets (the rows of
`ssmscope param show`), `apply_preset` draws them (in float64 from one generator seeded per run, then cast)
and sets the forward multipliers, `build_optimizer` makes the torch optimizer over the per-role groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ssmscope.ssm.bases import Base
from ssmscope.ssm.config import Optimizer
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.exponents import Exponents
from ssmscope.ssm.presets import (
    TIED_READOUT,
    Preset,
    base_config,
    readout_mult_exponents,
    readout_tied,
    readout_zero,
    width_ratios,
    with_base,
)
from ssmscope.ssm.roles import MODULE_OF_ROLE, MULTIPLIER_ROLES, Family, InitKind, Role, role_of, split_name

ModelConfig = Any
"""A model config with N_u = d_inner and N_x = d_state: ssm.config.MambaConfig or ssm.mamba2.Mamba2Config."""


def config_family(cfg: ModelConfig) -> Family:
    """The family a model config belongs to (MambaConfig: mamba; Mamba2Config: mamba2)."""
    return Family(getattr(cfg, "family", Family.MAMBA))


@dataclass(frozen=True)
class ParamPlan:
    """What a preset prescribes for one parameter (one row of `ssmscope param show`)."""

    name: str
    layer: int | None
    role: Role | None  # None: no rule covers this parameter
    shape: tuple[int, ...]
    init_kind: InitKind | None  # TIED: the readout is the embedding's matrix (init and lr: that row)
    init_scale: float | None  # std (normal, uniform) or value (constant); None for structural and tied
    init_exponents: Exponents | None
    lr: float | None
    lr_exponents: Exponents | None
    multiplier: float | None
    mult_exponents: Exponents | None
    init_rule: str = ""  # the base's rule in words, e.g. "U(±1·d_model^-1/2)", or "= embedding.weight"
    tied_to: str | None = None
    decay: bool | None = True  # the run's weight decay applies (False: its group has weight_decay 0); None: tied
    mult_base: float = 1.0  # the constant part of `multiplier` (the preset's mult_base)


def plan(model: nn.Module, cfg: ModelConfig, preset: Preset, optimizer: Optimizer | str,
         lr: float, base: Base | str | None = None) -> list[ParamPlan]:
    """Init, learning rate and multiplier of every parameter under a preset (on `base`, default the
    preset's own). A tied readout is listed as its own row (kind `tied`) next to the embedding.
    ConfigError when the preset (or its base) is for another model family than the config's."""
    optimizer = Optimizer(optimizer)
    preset = with_base(preset, base)
    family = config_family(cfg)
    for what, other in (("preset", preset.family), ("init base", preset.init_base.family)):
        if other != family:
            raise ConfigError(f"{what} {preset.name if what == 'preset' else preset.init_base.name} is for family "
                              f"{other}, the model is {family}; allowed: a {family} {what}")
    init_base = preset.init_base
    tied, zero = readout_tied(cfg, preset), readout_zero(cfg, preset)
    u_ratio, x_ratio = width_ratios(cfg, preset)
    base_cfg = base_config(cfg, preset)
    rows = []
    for name, p in model.named_parameters(remove_duplicate=False):
        layer, _ = split_name(name)
        role = role_of(name)
        if role is None or role not in preset.roles:
            rows.append(ParamPlan(name, layer, None, tuple(p.shape), None, None, None, None,
                                  None, None, None))
            continue
        s = preset.scaling(role, cfg.discretization)
        if tied and name == TIED_READOUT[0]:  # the readout's constant multiplier applies to its use of the matrix
            m = readout_mult_exponents(preset, cfg.discretization)
            rows.append(ParamPlan(name, layer, role, tuple(p.shape), InitKind.TIED, None, None, None,
                                  None, s.mult_base * m.factor(u_ratio, x_ratio), m, f"= {TIED_READOUT[1]}",
                                  TIED_READOUT[1], decay=None, mult_base=s.mult_base))
            continue
        rb = init_base.roles[role]
        scale = rb.scale_at(role, base_cfg)
        if scale is not None:
            scale *= s.init.factor(u_ratio, x_ratio)
        lr_exp = s.lr[optimizer.family]
        if role == Role.READOUT and zero and not tied:  # zero-initialised; lr and multiplier as the rule
            rows.append(ParamPlan(name, layer, role, tuple(p.shape), InitKind.CONSTANT, 0.0, None,
                                  lr * lr_exp.factor(u_ratio, x_ratio), lr_exp,
                                  s.mult_base * s.mult.factor(u_ratio, x_ratio), s.mult,
                                  "0 (zero-initialised readout)", decay=s.decay, mult_base=s.mult_base))
            continue
        rows.append(ParamPlan(
            name, layer, role, tuple(p.shape), rb.dist, scale,
            s.init if rb.dist != InitKind.STRUCTURAL else None,
            lr * lr_exp.factor(u_ratio, x_ratio), lr_exp,
            s.mult_base * s.mult.factor(u_ratio, x_ratio) if role in MULTIPLIER_ROLES else None,
            s.mult if role in MULTIPLIER_ROLES else None,
            rb.describe(role), decay=s.decay, mult_base=s.mult_base,
        ))
    return rows


def _structural_init(rule: str, p: torch.Tensor, cfg: ModelConfig, gen: torch.Generator) -> None:
    if rule == "s4d_real":  # A[i, n] = −(n + 1): A_log = log(n + 1)
        n = torch.arange(1, p.shape[1] + 1, dtype=torch.float64)
        p.copy_(torch.log(n).expand_as(p))
    elif rule == "log_uniform_a":  # Mamba-2 (state-spaces/mamba): A ~ U(a_init_range) per head
        lo, hi = cfg.a_init_range
        p.copy_(torch.log(torch.rand(p.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo))
    elif rule == "log_arange_heads":  # Mamba-2 (transformers): A_log = log(1 … nheads)
        p.copy_(torch.log(torch.arange(1, p.shape[0] + 1, dtype=torch.float64)))
    elif rule == "inverse_softplus_log_uniform_dt":  # softplus(bias) = Δ, Δ log-uniform in [dt_min, dt_max]
        r = torch.rand(p.shape, generator=gen, dtype=torch.float64)
        dt = torch.exp(r * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    else:  # pragma: no cover - ssm.roles.STRUCTURAL_RULES lists the rules this function knows
        raise AssertionError(rule)


def _draw(kind: InitKind, scale: float, p: torch.Tensor, gen: torch.Generator) -> None:
    if kind == InitKind.NORMAL:
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    elif kind == InitKind.UNIFORM:  # U(±√3·std)
        u = torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1
        p.copy_(u * (math.sqrt(3) * scale))
    else:
        p.fill_(scale)


def apply_preset(model: nn.Module, cfg: ModelConfig, preset: Preset, optimizer: Optimizer | str,
                 lr: float, seed: int = 0, base: Base | str | None = None) -> list[dict[str, Any]]:
    """Initialise every parameter and set multipliers under `preset` (on `base`, default the
    preset's own); tie or untie the readout as the config or the base says; return optimizer groups.

    One group per (role, layer) so that update norms can be read per role; a tied readout has no
    group of its own (it is the embedding's parameter). A role with `decay = false` gets `weight_decay: 0.0`
    in its group (torch takes a group's own value over the optimizer's), the others none, so
    build_optimizer's weight decay applies to them. Raises ConfigError if any parameter has no rule.
    """
    preset = with_base(preset, base)
    tied = readout_tied(cfg, preset)
    if hasattr(model, "set_readout_tied"):
        model.set_readout_tied(tied)
    rows = plan(model, cfg, preset, optimizer, lr)
    uncovered = [r.name for r in rows if r.role is None]
    if uncovered:
        raise ConfigError(f"no rule covers parameter(s) {', '.join(uncovered)}; add them to "
                          "ssmscope.ssm.roles.ROLE_OF_NAME")
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters(remove_duplicate=False))
    groups = []
    with torch.no_grad():
        for r in rows:
            if r.init_kind == InitKind.TIED:
                if params[r.name] is not params[r.tied_to]:
                    raise ConfigError(f"{r.name} should be tied to {r.tied_to}; build the model with "
                                      "MambaLM (it ties the readout) or tie it before apply_preset")
                continue
            p = params[r.name]
            if r.init_kind == InitKind.STRUCTURAL:
                _structural_init(preset.init_base.roles[r.role].rule, p, cfg, gen)
            else:
                _draw(r.init_kind, r.init_scale, p, gen)
            group = {"params": [p], "lr": r.lr, "name": r.name, "role": str(r.role), "layer": r.layer}
            if not r.decay:
                group["weight_decay"] = 0.0
            groups.append(group)
    modules = dict(model.named_modules())
    mults = {r.role: r.multiplier for r in rows if r.multiplier is not None}
    for role, rel in MODULE_OF_ROLE.items():
        if role not in mults:  # another family's role
            continue
        for name, module in modules.items():
            if name == rel or name.endswith("." + rel):
                module.multiplier = mults[role]
    return groups


def build_optimizer(groups: list[dict[str, Any]], optimizer: Optimizer | str,
                    weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                    momentum: float = 0.0) -> torch.optim.Optimizer:
    """The torch optimizer over preset groups (each group keeps its own learning rate; `weight_decay` applies
    to every group but those apply_preset exempted with their own weight_decay 0, a preset's `decay = false`)."""
    optimizer = Optimizer(optimizer)
    if optimizer == Optimizer.SGD:
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum,
                               weight_decay=weight_decay)
    if optimizer == Optimizer.ADAM:
        return torch.optim.Adam(groups, lr=groups[0]["lr"], betas=betas, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=betas, weight_decay=weight_decay)
