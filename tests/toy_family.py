"""A model family of one's own, in one module: a one-layer toy language model on ssmscope's own S6 mixer.

It implements probes.family.ModelFamily and nothing else, so `ssmscope.coord_check(ToyFamily(), ...)` trains it
at every width through the protocol: the preset initialises it and sets its learning rates by role (its
parameters carry ssmscope's names: embedding, layers.0.mixer.*, lm_head), the Observer taps `model.mixers`.
No norm layers, no residual: token embedding → one MambaMixer → readout.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ssmscope.probes.family import ModelShape, Setting, Subject
from ssmscope.probes.observer import Observer
from ssmscope.ssm.apply import apply_preset, build_optimizer
from ssmscope.ssm.config import Discretization, MambaConfig
from ssmscope.ssm.model import MambaMixer, ScaledEmbedding, ScaledLinear
from ssmscope.ssm.presets import Preset

VOCAB = 256


class _Block(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.mixer = MambaMixer(cfg)


class ToyLM(nn.Module):
    """ids (B, L) → logits (B, L, vocab) through one S6 mixer."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = ScaledEmbedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([_Block(cfg)])
        self.lm_head = ScaledLinear(cfg.d_model, cfg.vocab_size)

    @property
    def mixers(self) -> list[MambaMixer]:
        return [self.layers[0].mixer]

    def set_readout_tied(self, tied: bool) -> None:
        if tied:
            self.lm_head.weight = self.embedding.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm_head(self.layers[0].mixer(self.embedding(ids)))


class ToyFamily:
    """ToyLM at any width: d_model = N_u / 2, d_state = N_x, Euler or ZOH (default ZOH)."""

    group_probes = False

    def __init__(self) -> None:
        self.template = MambaConfig(n_layers=1, vocab_size=VOCAB, tie_readout=False)

    def build(self, n_u: int, n_x: int, setting: Setting, device: torch.device,
              dtype: torch.dtype | None) -> Subject:
        torch.manual_seed(setting.seed)
        cfg = replace(self.template, d_model=n_u // self.template.expand, d_state=n_x,
                      discretization=setting.discretization, scan=setting.scan)
        model = ToyLM(cfg)
        groups = apply_preset(model, cfg, setting.preset, setting.optimizer, setting.lr, seed=setting.seed)
        model.to(device=device, dtype=dtype)
        opt = build_optimizer(groups, setting.optimizer, weight_decay=setting.weight_decay)
        obs = Observer(model, grads=setting.grads, state_prev=setting.state_prev)  # type: ignore[arg-type]
        return Subject(model, opt, obs, cfg.discretization, 1, cfg.d_model, cfg.dt_min, cfg.dt_max)

    def discretizations(self, requested: Discretization | None) -> Discretization:
        return Discretization(requested) if requested is not None else Discretization.ZOH

    def shape_at(self, n_u: int, n_x: int) -> ModelShape | None:
        return ModelShape(n_u // self.template.expand, 1, VOCAB)

    def init_base(self, preset: Preset) -> str:
        return preset.init_base.name

    def describe(self) -> dict[str, Any]:
        return {"model": "tests.toy_family.ToyLM", "layers": 1}
