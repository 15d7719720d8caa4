"""What coord_check trains: a model at one width under a preset, with its optimizer, observer and loss.

A `make_model` argument names the model family; `family_of` turns it into a probes.family.ModelFamily (the
protocol) that builds one `Subject` per (width, preset, discretisation, optimizer, lr, seed). The two
implementations here:
  - ssmscope's MambaLM or Mamba2LM: an ssmscope MambaConfig or Mamba2Config (the template; d_model = N_u/expand,
    d_state = N_x per width, Mamba-2's heads added at its fixed headdim) — built, initialised and optimised exactly
    as a sweep's worker does (ssm.apply), observed by probes.observer_for's observer;
  - transformers' Mamba: an ssm.adapters.hf.HFMamba, or a transformers MambaConfig — built by
    transformers, rescaled by the adapter with the user's init at the base width as the base, optimised
    by the row-scaled optimizers (ssm.adapters.optim), observed by probes.hf.HFObserver;
  - any callable (N_u, N_x) → one of those two models;
and any object implementing the protocol is taken as it is (a family of one's own: one module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from ssmscope import records as rec
from ssmscope.probes.family import ModelFamily, ModelShape, Setting, Subject
from ssmscope.probes.mamba2 import observer_for
from ssmscope.runs.store.schema import DEFAULT_MODEL
from ssmscope.runs.sweeps.loop import next_token_loss
from ssmscope.ssm.adapters.hf import DISCRETIZATION as HF_DISCRETIZATION
from ssmscope.ssm.adapters.hf import HFMamba, HFWidths, apply_preset_hf, is_hf_mamba
from ssmscope.ssm.adapters.hf_mamba2 import HFMamba2, HFMamba2Widths, is_hf_mamba2
from ssmscope.ssm.adapters.optim import build_row_optimizer
from ssmscope.ssm.apply import apply_preset, build_optimizer
from ssmscope.ssm.config import Discretization, MambaConfig
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM, build_model
from ssmscope.ssm.model import MambaLM
from ssmscope.ssm.presets import Preset, load_preset
from ssmscope.ssm.roles import Family as ModelKind

ModelConfig = MambaConfig | Mamba2Config
"""An ssmscope model config: S6 (MambaLM) or SSD (Mamba2LM)."""

lm_loss = next_token_loss
"""The default loss: next-token cross entropy on token ids (runs.sweeps.loop.next_token_loss, as a sweep)."""


class Family:
    """The shared defaults of ssmscope's two families (probes.family.ModelFamily is the protocol)."""

    group_probes: bool = False
    """Whether its observer records per-group updates (probes.Observer.group_update_records)."""

    model_key: str = DEFAULT_MODEL
    """The store's `model` key of its runs (mamba | mamba2; runs.store.schema)."""

    def shape_at(self, n_u: int, n_x: int) -> ModelShape | None:
        """The model's d_model, depth and vocabulary at a width, known without building it (None: unknown)."""
        return None

    def init_base(self, preset: Preset) -> str:
        """The init base a run's exponents act on (stored as the run's `base`, the store's init_base key)."""
        return preset.init_base.name


class SsmscopeFamily(Family):
    """ssmscope's MambaLM or Mamba2LM from a config template, or from a callable returning one of them.

    A Mamba2Config template is made at (N_u, N_x) as a sweep makes Mamba-2 (runs.sweeps.spec): d_model = N_u/expand,
    d_state = N_x, the heads added at the template's fixed headdim; SSD discretises with Euler only."""

    def __init__(self, template: ModelConfig | None = None, make: Callable[[int, int], nn.Module] | None = None,
                 own: Discretization | None = None, sample: ModelConfig | None = None):
        self.template, self.make = template, make
        self.own = template.discretization if template is not None else own
        self.sample = template if template is not None else sample
        """A config the family builds (the template, or the callable's first model's): its depth, vocabulary, expand."""
        self.mamba2 = isinstance(self.sample, Mamba2Config)
        self.group_probes = True  # Observer and Mamba2Observer both rerun the model per update group
        self.model_key = ModelKind.MAMBA2.value if self.mamba2 else DEFAULT_MODEL

    def shape_at(self, n_u: int, n_x: int) -> ModelShape | None:
        if self.sample is None:
            return None
        cfg = self.sample
        return ModelShape(max(1, n_u // cfg.expand), cfg.n_layers, cfg.vocab_size)

    def discretizations(self, requested: Discretization | None) -> Discretization:
        if requested is None:
            return self.own
        if self.mamba2 and Discretization(requested) != Discretization.EULER:
            got = Discretization(requested).value
            raise ConfigError(f"discretization={got!r}: Mamba-2's SSD scan discretises with Euler (B̄ = Δ·B) only; "
                              "allowed: discretizations=['euler'] (or none)")
        if self.template is None and Discretization(requested) != self.own:
            raise ConfigError(f"discretization={requested!r}: the model callable builds {self.own} models; pass an "
                              "ssmscope MambaConfig as make_model to choose the discretisation per run")
        return Discretization(requested)

    def _at(self, n_u: int, n_x: int, disc: Discretization, scan: str) -> ModelConfig:
        """The template made at (N_u, N_x)."""
        template = self.template
        assert template is not None
        if n_u % template.expand:
            raise ConfigError(f"N_u={n_u} is not a multiple of expand={template.expand}")
        if self.mamba2:
            if n_u % template.headdim:
                raise ConfigError(f"N_u={n_u} is not a multiple of headdim={template.headdim}: Mamba-2 widens by "
                                  "heads of a fixed headdim")
            return replace(template, d_model=n_u // template.expand, d_state=n_x)
        return replace(template, d_model=n_u // template.expand, d_state=n_x, discretization=disc, scan=scan)

    def build(self, n_u: int, n_x: int, setting: Setting, device: torch.device,
              dtype: torch.dtype | None) -> Subject:
        torch.manual_seed(setting.seed)
        disc = setting.discretization
        if self.template is not None:
            cfg = self._at(n_u, n_x, disc, setting.scan)
            model = build_model(cfg)
        else:
            model = self.make(n_u, n_x)
            if isinstance(model, Mamba2LM) != self.mamba2:
                raise ConfigError(f"make_model returned {type(model).__name__}; expected one model family per check")
            cfg = model.cfg
            _check_widths(n_u, n_x, cfg.d_inner, cfg.d_state)
            if cfg.discretization != disc:
                raise ConfigError(f"make_model({n_u}, {n_x}) discretises with {cfg.discretization}, not {disc}")
        groups = apply_preset(model, cfg, setting.preset, setting.optimizer, setting.lr, seed=setting.seed)
        model.to(device=device, dtype=dtype)
        opt = build_optimizer(groups, setting.optimizer, weight_decay=setting.weight_decay)
        obs = observer_for(model, grads=setting.grads, state_prev=setting.state_prev)
        return Subject(model, opt, obs, cfg.discretization, cfg.n_layers, cfg.d_model, cfg.dt_min, cfg.dt_max)

    def describe(self) -> dict[str, Any]:
        name = "ssmscope.Mamba2LM" if self.mamba2 else "ssmscope.MambaLM"
        if self.template is not None:
            config = self.template.to_dict() if hasattr(self.template, "to_dict") else asdict(self.template)
            return {"model": name, "config": {k: v for k, v in config.items()
                                              if k not in ("d_model", "d_state", "discretization", "scan")}}
        return {"model": name, "factory": _qualname(self.make)}


class HFFamily(Family):
    """transformers' Mamba from an HFMamba (or a callable returning one), under the adapter.

    HFMamba2Family overrides what differs for Mamba-2 (`_factory`, `_config_class`, `_is_model`, `_widths`,
    `_observer`); the base width's model as the init base, the rescaling and the row-scaled optimizer are shared."""

    _factory: type = HFMamba
    _config_class = "MambaConfig"
    _what = "transformers Mamba"

    def __init__(self, make: Callable[[int, int], nn.Module], sample: dict[str, Any] | None = None):
        self.make = make
        self.sample = sample
        """The config of a model the callable built (depth, vocabulary, expand), when there is one."""

    def shape_at(self, n_u: int, n_x: int) -> ModelShape | None:
        if self.sample is not None:
            cfg: dict[str, Any] = self.sample
        elif isinstance(self.make, self._factory):
            try:
                import transformers
            except ImportError:
                return None  # building says so in one line
            cfg = {**getattr(transformers, self._config_class)().to_dict(), **self.make.config}
        else:
            return None
        return ModelShape(max(1, n_u // int(cfg.get("expand", 2))), int(cfg["num_hidden_layers"]),
                          int(cfg["vocab_size"]))

    def discretizations(self, requested: Discretization | None) -> Discretization:
        if requested is not None and Discretization(requested) != HF_DISCRETIZATION:
            raise ConfigError(f"discretization={Discretization(requested).value!r}: {self._what}'s scan is Euler "
                              "(B̄ = Δ·B); its coordinate check takes discretizations=['euler'] (or none)")
        return HF_DISCRETIZATION

    def _is_model(self, model: nn.Module) -> bool:
        return is_hf_mamba(model)

    def _widths(self, model: nn.Module) -> tuple[int, int, int, int]:
        """(N_u, N_x, depth, d_model)."""
        w = HFWidths.of(model)
        return w.n_u, w.n_x, w.n_layers, w.d_model

    def _observer(self, model: nn.Module, setting: Setting) -> Any:
        from ssmscope.probes.hf import HFObserver  # probes.hf needs the adapter only here

        return HFObserver(model, grads=setting.grads, state_prev=setting.state_prev, scan=setting.scan)

    def build(self, n_u: int, n_x: int, setting: Setting, device: torch.device,
              dtype: torch.dtype | None) -> Subject:
        preset = setting.preset
        torch.manual_seed(setting.seed)
        base = self.make(preset.base_n_u, preset.base_n_x)  # the user's init at the base width: the base
        torch.manual_seed(setting.seed)
        model = self.make(n_u, n_x)
        if not self._is_model(model):
            raise ConfigError(f"make_model returned {type(model).__name__}; expected one model family per check")
        got_u, got_x, n_layers, d_model = self._widths(model)
        _check_widths(n_u, n_x, got_u, got_x)
        groups = apply_preset_hf(model, preset, setting.optimizer, setting.lr, base=base)
        model.to(device=device, dtype=dtype)
        model.train()
        opt = build_row_optimizer(groups, setting.optimizer, weight_decay=setting.weight_decay)
        cfg = model.config
        return Subject(model, opt, self._observer(model, setting), HF_DISCRETIZATION, n_layers, d_model,
                       float(cfg.time_step_min), float(cfg.time_step_max))

    def init_base(self, preset: Preset) -> str:
        """The user's own initialisation is the base under the adapter (ssm.adapters.hf)."""
        return rec.USER_BASE

    def describe(self) -> dict[str, Any]:
        if isinstance(self.make, self._factory):
            return self.make.describe()
        return {"model": self._what, "factory": _qualname(self.make)}


class HFMamba2Family(HFFamily):
    """transformers' Mamba-2 from an HFMamba2 (or a callable returning one), under ssm.adapters.hf_mamba2, observed
    by probes.hf_mamba2.HFMamba2Observer; no group probes (as transformers' Mamba)."""

    _factory = HFMamba2
    _config_class = "Mamba2Config"
    _what = "transformers Mamba2"
    model_key = ModelKind.MAMBA2.value

    def _is_model(self, model: nn.Module) -> bool:
        return is_hf_mamba2(model)

    def _widths(self, model: nn.Module) -> tuple[int, int, int, int]:
        w = HFMamba2Widths.of(model)
        return w.n_u, w.n_x, w.n_layers, w.d_model

    def _observer(self, model: nn.Module, setting: Setting) -> Any:
        from ssmscope.probes.hf_mamba2 import HFMamba2Observer

        return HFMamba2Observer(model, grads=setting.grads, state_prev=setting.state_prev)


def _check_widths(n_u: int, n_x: int, got_u: int, got_x: int) -> None:
    if (got_u, got_x) != (n_u, n_x):
        raise ConfigError(f"make_model({n_u}, {n_x}) built a model with N_u={got_u}, N_x={got_x}; it must build "
                          "N_u (= expand · d_model, intermediate_size) and N_x (d_state, state_size) as asked")


def _qualname(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _is_hf_config(obj: object, name: str = "MambaConfig") -> bool:
    cls = type(obj)
    return cls.__name__ == name and cls.__module__.startswith("transformers")


SUPPORTED_FAMILIES = ("an ssmscope MambaConfig or Mamba2Config, a callable (n_u, n_x) -> ssmscope MambaLM or "
                      "Mamba2LM, a transformers "
                      "MambaConfig or Mamba2Config, ssmscope.HFMamba(...) or HFMamba2(...), a callable (n_u, n_x) -> "
                      "transformers MambaForCausalLM / Mamba2ForCausalLM, or a probes.family.ModelFamily")
"""What `make_model` may be, as the refusals word it."""


def _module_refusal(module: nn.Module) -> ConfigError:
    """Why a model object is not a `make_model`: coord_check builds every width itself, so it needs a family."""
    got = f"{type(module).__module__}.{type(module).__name__}"
    if isinstance(module, MambaLM | Mamba2LM):
        hint = (f"pass its config (model.cfg) as the template, or a callable (n_u, n_x) -> "
                f"{type(module).__name__}")
    elif is_hf_mamba(module) or is_hf_mamba2(module):
        hint = "pass its config (model.config) or ssmscope.HFMamba({...}), or a callable (n_u, n_x) -> model"
    else:
        hint = "coord_check trains ssmscope's MambaLM and transformers' Mamba only; give " + SUPPORTED_FAMILIES
    return ConfigError(f"make_model is a model ({got}), not a model family: coord_check builds a fresh model at "
                       f"every width; {hint}")


def family_of(make_model: Any) -> ModelFamily:
    """The family behind a `make_model` argument (see the module docstring); ConfigError otherwise.

    A ModelFamily (probes.family: a family of one's own) is itself. A torch module is callable but is not a
    family (calling it runs its forward on the widths): refused by name, with what to pass instead."""
    if isinstance(make_model, ModelFamily):
        return make_model
    if isinstance(make_model, nn.Module):
        raise _module_refusal(make_model)
    if isinstance(make_model, MambaConfig | Mamba2Config):
        return SsmscopeFamily(template=make_model)
    if isinstance(make_model, HFMamba):
        return HFFamily(make_model)
    if isinstance(make_model, HFMamba2):
        return HFMamba2Family(make_model)
    if _is_hf_config(make_model):  # its widths and rank are set per width (rank: ceil(hidden_size / 16))
        return HFFamily(HFMamba({k: v for k, v in make_model.to_dict().items() if k in _HF_CONFIG_KEYS}))
    if _is_hf_config(make_model, "Mamba2Config"):  # hidden_size, num_heads, state_size set per width
        return HFMamba2Family(HFMamba2({k: v for k, v in make_model.to_dict().items()
                                        if k in _HF_MAMBA2_CONFIG_KEYS}))
    if callable(make_model):
        return _CallableFamily(make_model)
    raise ConfigError(f"make_model={type(make_model).__name__}; allowed: " + SUPPORTED_FAMILIES)


_HF_CONFIG_KEYS = {"vocab_size", "num_hidden_layers", "layer_norm_epsilon", "expand", "conv_kernel", "use_bias",
                   "use_conv_bias", "hidden_act", "initializer_range", "residual_in_fp32", "time_step_scale",
                   "time_step_min", "time_step_max", "time_step_init_scheme", "time_step_floor",
                   "rescale_prenorm_residual", "tie_word_embeddings"}


_HF_MAMBA2_CONFIG_KEYS = {"vocab_size", "num_hidden_layers", "layer_norm_epsilon", "expand", "conv_kernel",
                          "use_bias", "use_conv_bias", "hidden_act", "initializer_range", "residual_in_fp32",
                          "time_step_min", "time_step_max", "time_step_floor", "time_step_limit",
                          "rescale_prenorm_residual", "tie_word_embeddings", "head_dim", "n_groups", "chunk_size"}


class _CallableFamily(Family):
    """A user callable (N_u, N_x) → model: the family is decided by the first model it returns."""

    def __init__(self, make: Callable[[int, int], nn.Module]):
        self.make = make
        self.inner: ModelFamily | None = None

    def _resolve(self, n_u: int, n_x: int) -> Family:
        if self.inner is None:
            try:
                probe = self.make(n_u, n_x)
            except TypeError as exc:  # not a callable of two ints (a class without those arguments, say)
                raise ConfigError(f"make_model({n_u}, {n_x}) raised TypeError: {exc}; make_model must be "
                                  + SUPPORTED_FAMILIES) from exc
            if isinstance(probe, MambaLM | Mamba2LM):
                self.inner = SsmscopeFamily(make=self.make, own=probe.cfg.discretization, sample=probe.cfg)
            elif is_hf_mamba(probe):
                self.inner = HFFamily(self.make, sample=probe.config.to_dict())
            elif is_hf_mamba2(probe):
                self.inner = HFMamba2Family(self.make, sample=probe.config.to_dict())
            else:
                raise ConfigError(f"make_model returned {type(probe).__module__}.{type(probe).__name__}; coord_check "
                                  "observes ssmscope's MambaLM / Mamba2LM and transformers' Mamba / Mamba2 models")
        return self.inner

    def shape_at(self, n_u: int, n_x: int) -> ModelShape | None:
        assert self.inner is not None, "prepare() first"
        return self.inner.shape_at(n_u, n_x)

    def prepare(self, n_u: int, n_x: int) -> ModelFamily:
        return self._resolve(n_u, n_x)

    @property
    def group_probes(self) -> bool:  # type: ignore[override]
        return self.inner is not None and self.inner.group_probes

    @property
    def model_key(self) -> str:  # type: ignore[override]
        assert self.inner is not None, "prepare() first"
        return getattr(self.inner, "model_key", DEFAULT_MODEL)

    def discretizations(self, requested: Discretization | None) -> Discretization:
        assert self.inner is not None, "prepare() first"
        return self.inner.discretizations(requested)

    def build(self, n_u: int, n_x: int, setting: Setting, device: torch.device,
              dtype: torch.dtype | None) -> Subject:
        return self._resolve(n_u, n_x).build(n_u, n_x, setting, device, dtype)

    def describe(self) -> dict[str, Any]:
        assert self.inner is not None, "prepare() first"
        return self.inner.describe()

    def init_base(self, preset: Preset) -> str:
        assert self.inner is not None, "prepare() first"
        return self.inner.init_base(preset)


def resolve_family(make_model: Any, first_width: tuple[int, int]) -> ModelFamily:
    """family_of, with a callable resolved (by building its first width once)."""
    family = family_of(make_model)
    if isinstance(family, _CallableFamily):
        return family.prepare(*first_width)
    return family


def preset_of(preset: Preset | str) -> Preset:
    """A preset object from a name or path (presets are validated once per check)."""
    return preset if isinstance(preset, Preset) else load_preset(preset)
