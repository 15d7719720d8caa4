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

The plan, the rescaling and the optimizer groups are ssm.adapters.rescale's, shared with transformers'
Mamba-2 (ssm.adapters.hf_mamba2): `apply_preset_hf`, `plan_hf`, `base_scales` and `canonical_params` take
either model. transformers is imported only by `HFMamba` (building a model at a width); everything else
works on the modules by duck typing, so this module imports without transformers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ssmscope.ssm.adapters import hf_mamba2, rescale
from ssmscope.ssm.adapters.rescale import (
    Adaptee,
    CanonicalParam,
    HFParamPlan,
    backbone,
    preset_groups,
    refuse_tied_or_uncovered,
)
from ssmscope.ssm.config import Discretization, Optimizer
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import Preset
from ssmscope.ssm.roles import Family, Role, role_of

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
def canonical_name(hf_name: str) -> str:
    """transformers name → ssmscope name (x_proj.weight stays whole here; see canonical_params)."""
    name = hf_name.removeprefix("backbone.")
    return CANONICAL_SUFFIX.get(name, name)


def _mamba_params(model: nn.Module) -> list[CanonicalParam]:
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


def _check_mamba(model: nn.Module) -> None:
    if not is_hf_mamba(model):
        raise ConfigError(f"{type(model).__module__}.{type(model).__name__} is not transformers' MambaForCausalLM, "
                          "MambaModel, Mamba2ForCausalLM or Mamba2Model")
    refuse_tied_or_uncovered(model, _mamba_params(model), "Mamba's")


MAMBA = Adaptee(Family.MAMBA, _check_mamba, _mamba_params, lambda m: (HFWidths.of(m).n_u, HFWidths.of(m).n_x),
                DISCRETIZATION)
"""transformers' Mamba as the shared core (ssm.adapters.rescale) sees it."""


def adaptee_of(model: nn.Module) -> Adaptee:
    """The adapter of a transformers model: Mamba-2's (ssm.adapters.hf_mamba2) or Mamba's (this module)."""
    return hf_mamba2.MAMBA2 if hf_mamba2.is_hf_mamba2(model) else MAMBA


def canonical_params(model: nn.Module) -> list[CanonicalParam]:
    """Every weight of a transformers Mamba (or Mamba-2) under its ssmscope name and role, fused weights by rows."""
    return adaptee_of(model).params(model)


def named_canonical_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(ssmscope name, tensor) for every weight; a fused weight's blocks are views of the one parameter."""
    params = dict(model.named_parameters())
    for cp in canonical_params(model):
        yield cp.name, cp.view(params)


def check_adaptable(model: nn.Module) -> None:
    """Refuse, in one line naming the fix, what the adapter cannot put under a preset."""
    adaptee_of(model).check(model)


# ----------------------------------------------------------------------------- preset application
def base_scales(model: nn.Module) -> dict[Role, float]:
    """RMS of each scalable role's entries, pooled over layers: the user's init scale at this width."""
    return rescale.base_scales(adaptee_of(model), model)


def plan_hf(model: nn.Module, preset: Preset | str, optimizer: Optimizer | str, lr: float,
            base: nn.Module | Mapping[Role, float]) -> list[HFParamPlan]:
    """Target init scale and learning rate of every ssmscope-named weight (see the module docstring)."""
    return rescale.plan(adaptee_of(model), model, preset, optimizer, lr, base)


def apply_preset_hf(model: nn.Module, preset: Preset | str, optimizer: Optimizer | str, lr: float, *,
                    base: nn.Module | Mapping[Role, float] | None = None) -> list[dict[str, Any]]:
    """Rescale the user's init of `model` under `preset` (in place) and return optimizer groups.

    `base`: the user's model built at the preset's base width (N_u0, N_x0), or its `base_scales`;
    None when `model` itself is at the base width. Returns one group per ssmscope weight (per layer),
    except a fused weight (Mamba's x_proj, Mamba-2's in_proj): one group per layer with a `row_scale`
    (ssm.adapters.optim) giving its row blocks their own learning rates. Works on transformers' Mamba and
    Mamba-2 alike; raises ConfigError for what cannot be adapted (check_adaptable).
    """
    return rescale.apply(adaptee_of(model), model, preset, optimizer, lr, base=base)


__all__ = ["CANONICAL_SUFFIX", "DISCRETIZATION", "HF_MAMBA_CLASSES", "MAMBA", "X_PROJ_BLOCKS", "CanonicalParam",
           "HFMamba", "HFParamPlan", "HFWidths", "adaptee_of", "apply_preset_hf", "backbone", "base_scales",
           "canonical_name", "canonical_params", "check_adaptable", "hf_mixers", "is_hf_mamba",
           "named_canonical_parameters", "plan_hf", "preset_groups"]
