"""transformers' Mamba (`MambaForCausalLM`, `MambaModel`) under an ssmscope preset, its modules unchanged.

Roles come from parameter names: every transformers name maps to the ssmscope name of the same
weight (CANONICAL_SUFFIX: `backbone.embeddings.weight` → `embedding.weight`, `backbone.layers.3.mixer.A_log`
→ `layers.3.mixer.A_log`, …), whose role ssm.roles already knows. The fused `x_proj.weight` (rows
dt_low | B | C, as in state-spaces/mamba) is read as three row blocks, `x_proj.dt`, `x_proj.B` and
`x_proj.C`, each with its own init scale and learning rate (a `row_scale` for ssm.adapters.optim).

The user's own init is the base: a preset's width exponents act on the scale that the user's
initialisation gives each role at the preset's base width (N_u0, N_x0). `apply_preset_hf` measures
that base scale (RMS of the role's entries, pooled over layers) on a model built at the base width,
and rescales each role of the model at width N to base scale · (N_u/N_u0)^a · (N_x/N_x0)^b,
keeping the user's init distribution (its shape) and seed. Structural roles (A_log, the Δ bias)
stay as the user initialised them. transformers' scan discretises with Euler (B̄ = Δ·B), so the
preset's `euler` rules apply.

transformers is imported only by `HFMamba` (building a model at a width); everything else
works on the modules by duck typing, so this module imports without transformers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ssmscope.ssm.config import Discretization, Optimizer
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import Preset, load_preset
from ssmscope.ssm.roles import MULTIPLIER_ROLES, STRUCTURAL_RULES, Role, role_of

DISCRETIZATION = Discretization.EULER
"""transformers' scan: Ā = exp(ΔA), B̄ = Δ·B (mamba_selective_scan)."""

HF_MAMBA_CLASSES = frozenset({"MambaForCausalLM", "MambaModel"})
"""The transformers classes this adapter knows (module transformers.models.mamba)."""

CANONICAL_SUFFIX: dict[str, str] = {
    "embeddings.weight": "embedding.weight",
    "norm_f.weight": "norm_f.weight",
    "lm_head.weight": "lm_head.weight",
}
"""transformers name (after `backbone.`, outside the layers) → ssmscope name. Layer names are equal."""

X_PROJ_BLOCKS: tuple[tuple[str, Role], ...] = (("dt", Role.X_PROJ_DT), ("B", Role.X_PROJ_B), ("C", Role.X_PROJ_C))
"""x_proj's row blocks in row order: dt_low (R rows), B (N rows), C (N rows)."""

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def is_hf_mamba(model: nn.Module) -> bool:
    """True for transformers' MambaForCausalLM / MambaModel (checked by class, without importing transformers)."""
    cls = type(model)
    return cls.__name__ in HF_MAMBA_CLASSES and cls.__module__.startswith("transformers.models.mamba")


def backbone(model: nn.Module) -> nn.Module:
    """The MambaModel inside a MambaForCausalLM (or the MambaModel itself)."""
    return getattr(model, "backbone", model)


def hf_mixers(model: nn.Module) -> list[nn.Module]:
    """transformers' MambaMixer of each layer, in depth order."""
    return [layer.mixer for layer in backbone(model).layers]


@dataclass(frozen=True)
class HFWidths:
    """The widths of a transformers Mamba, in ssmscope's symbols."""

    n_u: int  # N_u = intermediate_size
    n_x: int  # N_x = state_size
    d_model: int  # hidden_size
    rank: int  # R = time_step_rank
    n_layers: int

    @classmethod
    def of(cls, model: nn.Module) -> HFWidths:
        cfg = model.config
        return cls(n_u=int(cfg.intermediate_size), n_x=int(cfg.state_size), d_model=int(cfg.hidden_size),
                   rank=int(cfg.time_step_rank), n_layers=len(backbone(model).layers))

    def x_proj_rows(self) -> dict[str, slice]:
        """Row slice of each x_proj block: dt_low [0, R), B [R, R+N), C [R+N, R+2N)."""
        r, n = self.rank, self.n_x
        return {"dt": slice(0, r), "B": slice(r, r + n), "C": slice(r + n, r + 2 * n)}


@dataclass(frozen=True)
class HFMamba:
    """Width-generic construction of a transformers Mamba: call it with (N_u, N_x) for a fresh model.

    `config` holds transformers MambaConfig arguments other than the widths (num_hidden_layers,
    vocab_size, ...); hidden_size = N_u / expand and state_size = N_x are set per width, and
    time_step_rank is `rank`: "auto" = ceil(hidden_size / 16) at every width (Mamba's rule, which the
    presets assume: R ∝ N_u) or a fixed integer. tie_word_embeddings defaults to False, so that the
    readout keeps its own role. The model is initialised by transformers under the global torch seed.
    """

    config: Mapping[str, Any] = field(default_factory=dict)
    rank: int | str = "auto"
    model_class: str = "MambaForCausalLM"

    def __post_init__(self) -> None:
        if self.model_class not in HF_MAMBA_CLASSES:
            raise ConfigError(f"model_class={self.model_class!r}; allowed: {', '.join(sorted(HF_MAMBA_CLASSES))}")
        reserved = {"hidden_size", "state_size", "time_step_rank", "intermediate_size"} & set(self.config)
        if reserved:
            raise ConfigError(f"config sets {', '.join(sorted(reserved))}; the widths are set per call (N_u, N_x) "
                              "and the rank by rank=")
        if self.rank != "auto" and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0):
            raise ConfigError(f"rank={self.rank!r}; allowed: 'auto' or a positive integer")

    def __call__(self, n_u: int, n_x: int) -> nn.Module:
        try:
            import transformers
        except ImportError:
            raise ConfigError("transformers is not installed; install the extra: pip install 'ssmscope[hf]'") from None
        expand = int(self.config.get("expand", 2))
        if n_u % expand:
            raise ConfigError(f"N_u={n_u} is not a multiple of expand={expand}")
        d_model = n_u // expand
        kwargs = {"tie_word_embeddings": False, **self.config, "hidden_size": d_model, "state_size": n_x,
                  "time_step_rank": math.ceil(d_model / 16) if self.rank == "auto" else self.rank}
        return getattr(transformers, self.model_class)(transformers.MambaConfig(**kwargs))

    def describe(self) -> dict[str, Any]:
        """JSON-safe description, stored with each run."""
        return {"model": f"transformers.{self.model_class}", "config": dict(self.config), "rank": self.rank}


# ----------------------------------------------------------------------------- names and roles
@dataclass(frozen=True)
class CanonicalParam:
    """One ssmscope-named weight of a transformers Mamba: a whole parameter or a row block of x_proj."""

    name: str  # ssmscope name, e.g. layers.0.mixer.x_proj.B.weight
    hf_name: str  # transformers name of the parameter holding it
    layer: int | None
    role: Role | None
    rows: slice | None  # None: the whole parameter

    def view(self, params: Mapping[str, Tensor]) -> Tensor:
        p = params[self.hf_name]
        return p if self.rows is None else p[self.rows]


def canonical_name(hf_name: str) -> str:
    """transformers name → ssmscope name (x_proj.weight stays whole here; see canonical_params)."""
    name = hf_name.removeprefix("backbone.")
    return CANONICAL_SUFFIX.get(name, name)


def canonical_params(model: nn.Module) -> list[CanonicalParam]:
    """Every weight of a transformers Mamba under its ssmscope name and role, x_proj split by rows."""
    widths = HFWidths.of(model)
    out = []
    for hf_name, _ in model.named_parameters():
        name = canonical_name(hf_name)
        m = _LAYER.match(name)
        layer = int(m.group(1)) if m else None
        if name.endswith("mixer.x_proj.weight"):
            rows = widths.x_proj_rows()
            for block, role in X_PROJ_BLOCKS:
                out.append(CanonicalParam(name.replace("x_proj.weight", f"x_proj.{block}.weight"), hf_name, layer,
                                          role, rows[block]))
            continue
        out.append(CanonicalParam(name, hf_name, layer, role_of(name), None))
    return out


def named_canonical_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(ssmscope name, tensor) for every weight; x_proj's blocks are views of the one parameter."""
    params = dict(model.named_parameters())
    for cp in canonical_params(model):
        yield cp.name, cp.view(params)


def check_adaptable(model: nn.Module) -> None:
    """Refuse, in one line naming the fix, what the adapter cannot put under a preset."""
    if not is_hf_mamba(model):
        raise ConfigError(f"{type(model).__module__}.{type(model).__name__} is not transformers' MambaForCausalLM "
                          "or MambaModel")
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is backbone(model).embeddings.weight:
        raise ConfigError("the model ties lm_head to the embedding (tie_word_embeddings=True), so the readout "
                          "cannot follow its own rule; build the config with tie_word_embeddings=False")
    uncovered = [cp.hf_name for cp in canonical_params(model) if cp.role is None]
    if uncovered:
        raise ConfigError(f"no role covers parameter(s) {', '.join(uncovered)}; build the config with "
                          "use_bias=False (Mamba's default) or extend ssm.roles.ROLE_OF_NAME")


# ----------------------------------------------------------------------------- preset application
def base_scales(model: nn.Module) -> dict[Role, float]:
    """RMS of each scalable role's entries, pooled over layers: the user's init scale at this width."""
    params = dict(model.named_parameters())
    sums: dict[Role, list[float]] = {}
    with torch.no_grad():
        for cp in canonical_params(model):
            if cp.role is None or cp.role in STRUCTURAL_RULES:
                continue
            v = cp.view(params).detach().double()
            acc = sums.setdefault(cp.role, [0.0, 0])
            acc[0] += v.square().sum().item()
            acc[1] += v.numel()
    return {role: math.sqrt(s / n) for role, (s, n) in sums.items() if n}


@dataclass(frozen=True)
class HFParamPlan:
    """What a preset prescribes for one ssmscope-named weight of a transformers Mamba."""

    name: str
    hf_name: str
    layer: int | None
    role: Role
    rows: slice | None
    init_scale: float | None  # target RMS; None for structural roles (kept as initialised)
    lr: float


def _ratios(widths: HFWidths, preset: Preset) -> tuple[float, float]:
    return widths.n_u / preset.base_n_u, widths.n_x / preset.base_n_x


def _resolve_preset(preset: Preset | str) -> Preset:
    return preset if isinstance(preset, Preset) else load_preset(preset)


def plan_hf(model: nn.Module, preset: Preset | str, optimizer: Optimizer | str, lr: float,
            base: nn.Module | Mapping[Role, float]) -> list[HFParamPlan]:
    """Target init scale and learning rate of every ssmscope-named weight (see the module docstring)."""
    check_adaptable(model)
    preset = _resolve_preset(preset)
    optimizer = Optimizer(optimizer)
    if isinstance(base, nn.Module):
        check_adaptable(base)
        got = HFWidths.of(base)
        if (got.n_u, got.n_x) != (preset.base_n_u, preset.base_n_x):
            raise ConfigError(f"the base model has N_u={got.n_u}, N_x={got.n_x}; preset {preset.name} has its base "
                              f"at N_u0={preset.base_n_u}, N_x0={preset.base_n_x}: build the base at that width")
        base = base_scales(base)
    u_ratio, x_ratio = _ratios(HFWidths.of(model), preset)
    rows = []
    for cp in canonical_params(model):
        s = preset.scaling(cp.role, DISCRETIZATION)
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


def apply_preset_hf(model: nn.Module, preset: Preset | str, optimizer: Optimizer | str, lr: float, *,
                    base: nn.Module | Mapping[Role, float] | None = None) -> list[dict[str, Any]]:
    """Rescale the user's init of `model` under `preset` (in place) and return optimizer groups.

    `base`: the user's model built at the preset's base width (N_u0, N_x0), or its `base_scales`;
    None when `model` itself is at the base width. Returns one group per ssmscope weight (per layer),
    except x_proj: one group per layer with a `row_scale` (ssm.adapters.optim) giving its dt, B and C
    rows their own learning rates. Raises ConfigError for what cannot be adapted (check_adaptable).
    """
    check_adaptable(model)
    preset = _resolve_preset(preset)
    if base is None:
        widths = HFWidths.of(model)
        if (widths.n_u, widths.n_x) != (preset.base_n_u, preset.base_n_x):
            raise ConfigError(f"the model has N_u={widths.n_u}, N_x={widths.n_x} but preset {preset.name}'s base "
                              f"is N_u0={preset.base_n_u}, N_x0={preset.base_n_x}; pass base= the same model "
                              "built at the base width (the user's init there is the base)")
        base = base_scales(model)
    plans = plan_hf(model, preset, optimizer, lr, base)
    current = base_scales(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for row in plans:
            if row.init_scale is None or current.get(row.role, 0.0) == 0.0:
                continue  # structural, or a role the user initialised to zero (zero stays zero)
            row_view = params[row.hf_name] if row.rows is None else params[row.hf_name][row.rows]
            row_view.mul_(row.init_scale / current[row.role])
    return preset_groups(model, plans)


def preset_groups(model: nn.Module, plans: list[HFParamPlan]) -> list[dict[str, Any]]:
    """Optimizer groups from a plan: per weight, and x_proj with per-row factors relative to its dt rows."""
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
            base_lr = row.lr  # the first block (dt) carries the group's lr; the others are relative to it
            group = {"params": [p], "lr": base_lr, "row_scale": torch.ones(p.shape[0], dtype=torch.float64),
                     "name": canonical_name(row.hf_name), "role": "x_proj", "layer": row.layer}
            fused[row.hf_name] = group
            groups.append(group)
        group["row_scale"][row.rows] = row.lr / group["lr"] if group["lr"] else 0.0
    return groups


__all__ = ["CANONICAL_SUFFIX", "DISCRETIZATION", "HF_MAMBA_CLASSES", "X_PROJ_BLOCKS", "CanonicalParam", "HFMamba",
           "HFParamPlan", "HFWidths", "apply_preset_hf", "backbone", "base_scales", "canonical_name",
           "canonical_params", "check_adaptable", "hf_mixers", "is_hf_mamba", "named_canonical_parameters", "plan_hf",
           "preset_groups"]
