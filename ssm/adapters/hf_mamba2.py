"""transformers' Mamba-2 (`Mamba2ForCausalLM`, `Mamba2Model`) under an ssmscope preset, its modules unchanged.

As ssm.adapters.hf does for Mamba: every transformers name maps to the ssmscope (ssm.mamba2.Mamba2LM) name of the
same weight (`backbone.embeddings.weight` → `embedding.weight`, `backbone.layers.3.mixer.A_log` →
`layers.3.mixer.A_log`; the gated norm `mixer.norm.weight` keeps its name and is the role gated_norm, the block's
`norm.weight` the role norm), whose role ssm.roles knows. The fused `in_proj.weight` (rows z | x | B | C | dt, as
state-spaces/mamba) is read as five row blocks `in_proj.z` … `in_proj.dt`, as Mamba2LM holds them, each with its
own init rescale and learning rate (a `row_scale` for ssm.adapters.optim).

The user's init is the base (ssm.adapters.rescale: the RMS per role of the user's model built at the preset's base
width, rescaled per role by the preset's width factor); A_log and dt_bias are structural and stay as the user
initialised them; forward multipliers are refused (transformers' modules have none). SSD discretises with Euler.
Widths, HF-style: N_u = num_heads · head_dim (= expand · hidden_size), N_x = state_size.

transformers is imported only by `HFMamba2` (building a model at a width).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ssmscope.ssm.adapters.rescale import Adaptee, CanonicalParam, backbone, refuse_tied_or_uncovered
from ssmscope.ssm.config import Discretization
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import IN_PROJ_BLOCKS
from ssmscope.ssm.roles import Family, role_of

DISCRETIZATION = Discretization.EULER
"""SSD: Ā = exp(Δ·a), B̄ = Δ·B."""

HF_MAMBA2_CLASSES = frozenset({"Mamba2ForCausalLM", "Mamba2Model"})
"""The transformers classes this adapter knows (module transformers.models.mamba2)."""

_LAYER = re.compile(r"^layers\.(\d+)\.")


def is_hf_mamba2(model: object) -> bool:
    """True for transformers' Mamba2ForCausalLM / Mamba2Model (checked by class, without importing transformers)."""
    cls = type(model)
    return cls.__name__ in HF_MAMBA2_CLASSES and cls.__module__.startswith("transformers.models.mamba2")


def hf_mamba2_mixers(model: nn.Module) -> list[nn.Module]:
    """transformers' Mamba2Mixer of each layer, in depth order."""
    return [layer.mixer for layer in backbone(model).layers]


@dataclass(frozen=True)
class HFMamba2Widths:
    """The widths of a transformers Mamba-2, in ssmscope's symbols."""

    n_u: int  # N_u = num_heads · head_dim (d_inner)
    n_x: int  # N_x = state_size
    d_model: int  # hidden_size
    nheads: int
    headdim: int
    ngroups: int
    n_layers: int

    @classmethod
    def of(cls, model: nn.Module) -> HFMamba2Widths:
        cfg = model.config
        return cls(n_u=int(cfg.num_heads) * int(cfg.head_dim), n_x=int(cfg.state_size),
                   d_model=int(cfg.hidden_size), nheads=int(cfg.num_heads), headdim=int(cfg.head_dim),
                   ngroups=int(cfg.n_groups), n_layers=len(backbone(model).layers))

    def in_proj_rows(self) -> dict[str, slice]:
        """Row slice of each in_proj block: z, x (d_inner each), B, C (G·N each), dt (H)."""
        gn = self.ngroups * self.n_x
        sizes = (self.n_u, self.n_u, gn, gn, self.nheads)
        out, start = {}, 0
        for name, size in zip(IN_PROJ_BLOCKS, sizes, strict=True):
            out[name] = slice(start, start + size)
            start += size
        return out


@dataclass(frozen=True)
class HFMamba2:
    """Width-generic construction of a transformers Mamba-2: call it with (N_u, N_x) for a fresh model.

    `config` holds transformers Mamba2Config arguments other than the widths (num_hidden_layers, vocab_size,
    head_dim, n_groups, ...); per width hidden_size = N_u / expand, num_heads = N_u / head_dim (heads added at a
    fixed head_dim, as ssmscope's Mamba-2 sweeps widen) and state_size = N_x. tie_word_embeddings defaults to
    False, so that the readout keeps its own role. transformers initialises the model under the global torch seed.
    """

    config: Mapping[str, Any] = field(default_factory=dict)
    model_class: str = "Mamba2ForCausalLM"

    def __post_init__(self) -> None:
        if self.model_class not in HF_MAMBA2_CLASSES:
            raise ConfigError(f"model_class={self.model_class!r}; allowed: {', '.join(sorted(HF_MAMBA2_CLASSES))}")
        reserved = {"hidden_size", "num_heads", "state_size"} & set(self.config)
        if reserved:
            raise ConfigError(f"config sets {', '.join(sorted(reserved))}; the widths are set per call (N_u, N_x): "
                              "hidden_size = N_u/expand, num_heads = N_u/head_dim, state_size = N_x")

    def __call__(self, n_u: int, n_x: int) -> nn.Module:
        try:
            import transformers
        except ImportError:
            raise ConfigError("transformers is not installed; install the extra: pip install 'ssmscope[hf]'") from None
        expand, head_dim = int(self.config.get("expand", 2)), int(self.config.get("head_dim", 64))
        n_groups = int(self.config.get("n_groups", 8))
        if n_u % expand or n_u % head_dim:
            raise ConfigError(f"N_u={n_u} is not a multiple of expand={expand} and head_dim={head_dim}")
        if (n_u // head_dim) % n_groups:
            raise ConfigError(f"N_u={n_u} gives {n_u // head_dim} heads, not a multiple of n_groups={n_groups}")
        kwargs = {"tie_word_embeddings": False, **self.config, "hidden_size": n_u // expand,
                  "num_heads": n_u // head_dim, "state_size": n_x}
        return getattr(transformers, self.model_class)(transformers.Mamba2Config(**kwargs))

    def describe(self) -> dict[str, Any]:
        """JSON-safe description, stored with each run."""
        return {"model": f"transformers.{self.model_class}", "config": dict(self.config)}


def canonical_name(hf_name: str) -> str:
    """transformers name → Mamba2LM name (in_proj.weight stays whole here; see canonical_params)."""
    name = hf_name.removeprefix("backbone.")
    return "embedding.weight" if name == "embeddings.weight" else name


def canonical_params(model: nn.Module) -> list[CanonicalParam]:
    """Every weight of a transformers Mamba-2 under its Mamba2LM name and role, in_proj split by rows."""
    rows = HFMamba2Widths.of(model).in_proj_rows()
    out = []
    for hf_name, _ in model.named_parameters():
        name = canonical_name(hf_name)
        m = _LAYER.match(name)
        layer = int(m.group(1)) if m else None
        if name.endswith("mixer.in_proj.weight"):
            for block in IN_PROJ_BLOCKS:
                block_name = name.replace("in_proj.weight", f"in_proj.{block}.weight")
                out.append(CanonicalParam(block_name, hf_name, layer, role_of(block_name), rows[block]))
            continue
        out.append(CanonicalParam(name, hf_name, layer, role_of(name), None))
    return out


def check_adaptable(model: nn.Module) -> None:
    """Refuse, in one line naming the fix, what the adapter cannot put under a preset."""
    if not is_hf_mamba2(model):
        raise ConfigError(f"{type(model).__module__}.{type(model).__name__} is not transformers' Mamba2ForCausalLM "
                          "or Mamba2Model")
    refuse_tied_or_uncovered(model, canonical_params(model), "Mamba-2's")


def _widths(model: nn.Module) -> tuple[int, int]:
    w = HFMamba2Widths.of(model)
    return w.n_u, w.n_x


MAMBA2 = Adaptee(Family.MAMBA2, check_adaptable, canonical_params, _widths, DISCRETIZATION)
"""transformers' Mamba-2 as the shared core (ssm.adapters.rescale) sees it; ssm.adapters.hf's apply_preset_hf,
plan_hf and base_scales pick it for a Mamba-2 model."""


__all__ = ["DISCRETIZATION", "HF_MAMBA2_CLASSES", "MAMBA2", "HFMamba2", "HFMamba2Widths", "canonical_name",
           "canonical_params", "check_adaptable", "hf_mamba2_mixers", "is_hf_mamba2"]
