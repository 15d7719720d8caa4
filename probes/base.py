"""What every observer shares: deferred records of a logged step, the readout probes and the parameter records.

`_Pending` collects one logged step's records with their sums still on the device (one synchronisation per
step); `_ReadoutTap` captures the logits and the embedding/readout gradient split of an LM with `embedding`,
`lm_head` and `readout_tied` (MambaLM, Mamba2LM); `ObserverBase` holds the options and bookkeeping of the
S6 `Observer` (probes.observer) and the SSD `Mamba2Observer` (probes.mamba2), and their common records:
‖W‖, ‖W − W_init‖ per parameter (group f"{role}:{name}") and the readout probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ssmscope.probes.schema import Quantity, Site
from ssmscope.probes.stats import (
    PARAM_BATCH,
    ManyParamSums,
    as_record,
    many_activation_sums,
    many_channel_sums,
    param_sums,
)
from ssmscope.ssm.roles import role_of, split_name


def _zero_record(shape: torch.Size, per_channel: int) -> tuple[dict[str, int], list[float]]:
    """Counts and sums of an all-zero (B, L, C) tensor (Δ at the reference step itself)."""
    n = math.prod(shape)
    return {"count": n * per_channel, "n_tokens": n // shape[-1], "n_channels": n}, [0.0, 0.0, 0.0, 0.0]


class _Pending:
    """Records of one logged step whose sums are still tensors on the device. Activations and
    per-channel sums of squares of one shape are reduced together (one stacked reduction per
    shape), and finish() reads every float with one `.tolist()`: one synchronisation."""

    def __init__(self) -> None:
        self.records: list[list] = []  # [base, counts, sums (Tensor (4,) | list | None until grouped)]
        self.groups: dict[tuple, list[tuple[int, Tensor, Tensor | None]]] = {}

    def add(self, base: dict[str, Any], sums: tuple[dict[str, int], Tensor | list[float]]) -> None:
        self.records.append([base, *sums])

    def add_activation(self, base: dict[str, Any], v: Tensor) -> None:
        self._defer(("act", tuple(v.shape), v.dtype, v.device, 1), base, v, None)

    def add_channels(self, base: dict[str, Any], csq: Tensor, per_channel: int, maxabs: Tensor) -> None:
        self._defer(("chan", tuple(csq.shape), csq.dtype, csq.device, per_channel), base, csq, maxabs)

    def _defer(self, key: tuple, base: dict[str, Any], t: Tensor, maxabs: Tensor | None) -> None:
        self.records.append([base, None, None])
        self.groups.setdefault(key, []).append((len(self.records) - 1, t, maxabs))

    def finish(self) -> list[dict[str, Any]]:
        for key, items in self.groups.items():
            tensors = [t for _, t, _ in items]
            if key[0] == "act":
                done = many_activation_sums(tensors)
            else:
                done = many_channel_sums(tensors, key[4], [m for _, _, m in items])
            for (i, _, _), (counts, sums) in zip(items, done, strict=True):
                self.records[i][1:] = [counts, sums]
        tensors = [s for _, _, s in self.records if isinstance(s, Tensor)]
        values = iter(torch.stack(tensors).tolist() if tensors else [])  # the one synchronisation
        return [{**base, **as_record(counts, next(values) if isinstance(s, Tensor) else s)}
                for base, counts, s in self.records]


class _ReadoutTap:
    """The readout probes of an LM (MambaLM, Mamba2LM): the logits of the armed forward, and the gradient of the
    embedding and readout matrices on that batch split by use, computed from what the hooks saw (never from .grad,
    which may hold other batches' gradients):

        input side   ∂L/∂E[v] = m_e · Σ over positions holding token v of ∂L/∂(embedding output)
        readout side ∂L/∂W    = m_r · (∂L/∂logits)ᵀ · h          (h: the readout's input, after the final norm)

    with m_e, m_r the embedding's and readout's forward multipliers. A tied model's shared matrix gets their sum
    (group "shared"); an untied model's two matrices are recorded as "input" and "readout" all the same."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.clear()

    def clear(self) -> None:
        self.logits: Tensor | None = None
        self.ids: Tensor | None = None
        self.h: Tensor | None = None
        self.grad_embedded: Tensor | None = None
        self.grad_logits: Tensor | None = None

    def attach(self, armed: Callable[[], bool]) -> list[Any]:
        """Forward hooks on the embedding and the readout, and gradient hooks on their outputs (the split is the
        point of these probes: they are recorded whether or not the Observer records ∂L/∂y, ∂L/∂x)."""

        def on_embedding(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not armed():
                return
            self.ids = args[0].detach()
            if output.requires_grad:
                output.register_hook(lambda g: setattr(self, "grad_embedded", g.detach()))

        def on_readout(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not armed():
                return
            self.h, self.logits = args[0].detach(), output.detach()
            if output.requires_grad:
                output.register_hook(lambda g: setattr(self, "grad_logits", g.detach()))

        return [self.model.embedding.register_forward_hook(on_embedding),
                self.model.lm_head.register_forward_hook(on_readout)]

    def gradient_split(self) -> dict[str, Tensor]:
        """{"input", "readout"[, "shared"]} → the (vocab, d_model) gradient of each use (empty before a backward)."""
        if self.grad_embedded is None or self.grad_logits is None or self.ids is None or self.h is None:
            return {}
        emb, head = self.model.embedding, self.model.lm_head
        d = self.grad_embedded.shape[-1]
        grad_in = torch.zeros(emb.weight.shape, dtype=torch.float64, device=emb.weight.device)
        grad_in.index_add_(0, self.ids.reshape(-1), self.grad_embedded.reshape(-1, d).double())
        grad_in *= emb.multiplier
        g, h = self.grad_logits.reshape(-1, self.grad_logits.shape[-1]).double(), self.h.reshape(-1, d).double()
        grad_out = (g.T @ h) * head.multiplier
        split = {"input": grad_in, "readout": grad_out}
        if self.model.readout_tied:
            split["shared"] = grad_in + grad_out
        return split


class ObserverBase:
    """Options, init snapshots and the model-independent records of an observer (see the subclasses)."""

    def __init__(self, model: nn.Module, *, grads: bool = True, params: bool = True, state_prev: bool = False,
                 param_every: int = 1, readout: bool = False):
        if isinstance(param_every, bool) or not isinstance(param_every, int) or param_every < 1:
            raise ValueError(f"param_every={param_every!r}; allowed: a positive integer")
        self.model = model
        self.grads = grads
        self.params = params
        self.state_prev = state_prev
        self.param_every = param_every
        self._n_collected = 0
        self._param_plan: tuple | None = None  # parameters, record keys, the batched reduction (first use)
        self._handles: list[Any] = []
        self._armed_step: int | None = None
        self._init_params: dict[str, Tensor] | None = None
        self._readout = _ReadoutTap(model) if readout else None
        self._first_logits: Tensor | None = None
        self._prev_logits: Tensor | None = None

    # Set by the subclass: its mixers, one tap per mixer (reset on arm), the first and previous armed steps' per-layer
    # references ({"inputs": [...], ...}), and how a mixer's probe is made from named reference inputs.
    mixers: list[nn.Module]
    _taps: list[Any]
    _first: dict[str, list] | None
    _prev: dict[str, list] | None

    def _new_probe(self, references: dict[str, Any], want_grad: bool) -> Any:
        raise NotImplementedError

    def arm(self, step: int) -> None:
        """Make the next forward (and backward) on the model record for `step`: a fresh probe per mixer, with the
        first armed step's scan inputs (and with `state_prev` the previous one's) as references."""
        self._armed_step = step
        for layer, mixer in enumerate(self.mixers):
            refs: dict[str, Any] = {}
            if self._first is not None:
                refs["init"] = self._first["inputs"][layer]
                if self.state_prev:
                    refs["prev"] = self._prev["inputs"][layer]
            mixer.probe = self._new_probe(refs, self.grads)
            self._taps[layer].__init__()
        if self._readout is not None:
            self._readout.clear()
        self._snapshot_init_params()

    # ------------------------------------------------------------------ collecting
    current_keys: tuple[str, ...] = ("inputs", "y", "cx", "block_out")
    """What a collected step keeps per layer as the next steps' references (`_first`, `_prev`)."""

    def _layer_records(self, step: int, layer: int, probe: Any, tap: Any, pending: _Pending,
                       current: dict[str, list]) -> None:
        raise NotImplementedError

    def collect(self) -> list[dict[str, Any]]:
        """Records of the armed step (call after backward when grads are on); disarms. Per layer the subclass's
        `_layer_records`, then the parameter and readout records, read with one synchronisation."""
        step = self._armed_step
        if step is None:
            raise RuntimeError(f"{type(self).__name__}.collect() called without arm(step) before the forward")
        pending = _Pending()
        current: dict[str, list] = {key: [] for key in self.current_keys}
        for layer, (mixer, tap) in enumerate(zip(self.mixers, self._taps, strict=True)):
            probe = mixer.probe
            if probe is None or probe.inputs is None or tap.y is None:
                raise RuntimeError(f"the armed forward did not reach layer {layer}; arm() must precede the "
                                   "model's forward")
            self._layer_records(step, layer, probe, tap, pending, current)
            mixer.probe = None
        self._common_records(step, pending)
        records = pending.finish()
        self._n_collected += 1
        if self._first is None:
            self._first = current
        self._prev = current
        self._armed_step = None
        return records

    # ------------------------------------------------------------------ per-group updates
    update_groups: Mapping[str, tuple[str, ...]] = {}
    """Group → the roles it moves (probes.update_groups, the subclass's family)."""

    def _group_layer_records(self, step: int, layer: int, group: str, mixed: dict[str, Tensor],
                             pending: _Pending) -> None:
        raise NotImplementedError

    def group_update_records(self, step: int, inputs: Tensor) -> list[dict[str, Any]]:
        """Δ of the state, y, the readout and the block output from init with only one parameter group moved.

        Recomputes the probe batch `inputs` once per group in `update_groups` (torch.func.functional_call) with every
        other parameter at its initial value, so that a flat total cannot hide a growing part; the state's Δ against
        the first armed step's scan inputs. Needs a previous collect() (the init references) and params=True.
        Records: sites x, y, cx, block_out, quantity delta_init, group = the group's name."""
        if self._first is None or self._init_params is None:
            raise RuntimeError("group updates need the init step collected first")
        current = {n: p.detach() for n, p in self.model.named_parameters()}
        pending = _Pending()
        for group, roles in self.update_groups.items():
            mixed = {n: (current[n] if str(role_of(n)) in roles else self._init_params[n]) for n in current}
            with self._armed_for_group(), torch.no_grad():
                functional_call(self.model, mixed, (inputs,))
                for layer in range(len(self.mixers)):
                    self._group_layer_records(step, layer, group, mixed, pending)
        return pending.finish()

    @contextmanager
    def _armed_for_group(self) -> Iterator[None]:
        self._armed_step = -1
        for layer, mixer in enumerate(self.mixers):
            mixer.probe = self._new_probe({"init": self._first["inputs"][layer]}, want_grad=False)
            self._taps[layer].__init__()
        try:
            yield
        finally:
            for mixer in self.mixers:
                mixer.probe = None
            self._armed_step = None

    def _snapshot_init_params(self) -> None:
        """W_init: the parameters at the first arm() (for ‖W − W_init‖)."""
        if self.params and self._init_params is None:
            self._init_params = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def _common_records(self, step: int, pending: _Pending) -> None:
        """Parameter records (every param_every-th collected step) and the readout probes."""
        if self.params and self._n_collected % self.param_every == 0:
            self._param_records(step, pending)
        if self._readout is not None:
            self._readout_records(step, pending)

    def _readout_records(self, step: int, pending: _Pending) -> None:
        """The logits (value, Δ since the first and the previous armed step) and the readout gradient split."""
        tap = self._readout
        assert tap is not None
        if tap.logits is None:
            raise RuntimeError("the armed forward did not reach the readout; arm() must precede the model's forward")

        def key(site: Site, quantity: Quantity, group: str = "") -> dict[str, Any]:
            return {"step": step, "layer": -1, "site": str(site), "quantity": str(quantity), "group": group}

        logits = tap.logits
        pending.add_activation(key(Site.LOGITS, Quantity.VALUE), logits)
        references = ((self._first_logits, Quantity.DELTA_INIT), (self._prev_logits, Quantity.DELTA_PREV))
        for reference, quantity in references:
            if reference is None:
                pending.add(key(Site.LOGITS, quantity), _zero_record(logits.shape, 1))
            else:
                pending.add_activation(key(Site.LOGITS, quantity), logits - reference)
        if self._first_logits is None:
            self._first_logits = logits
        self._prev_logits = logits
        for group, grad in tap.gradient_split().items():
            pending.add(key(Site.READOUT_GRAD, Quantity.VALUE, group), param_sums(grad))

    def _param_records(self, step: int, pending: _Pending) -> None:
        """‖W‖ and ‖W − W_init‖ per parameter: tensors up to stats.PARAM_BATCH elements batched
        (a few ops for all of them), larger ones one by one (one float64-accumulating pass each)."""
        assert self._init_params is not None
        if self._param_plan is None:
            named = list(self.model.named_parameters())
            bases = []
            for name, _ in named:
                layer, _ = split_name(name)
                bases.append({"layer": -1 if layer is None else layer, "site": str(Site.PARAM),
                              "group": f"{role_of(name)}:{name}"})
            small = [i for i, (_, p) in enumerate(named) if 0 < p.numel() <= PARAM_BATCH]
            device = named[0][1].device if named else "cpu"
            self._param_plan = (named, bases, small, ManyParamSums([named[i][1].shape for i in small], device))
        named, bases, small, batched = self._param_plan
        params = [named[i][1].detach() for i in small]
        with torch.no_grad():
            deltas = torch._foreach_sub(params, [self._init_params[named[i][0]] for i in small])
        sums = dict(zip(small, zip(batched(params), batched(deltas), strict=True), strict=True))
        for i, (name, p) in enumerate(named):
            if i in sums:
                value, delta = sums[i]
            else:
                value, delta = param_sums(p), param_sums(p.detach() - self._init_params[name])
            pending.add({"step": step, **bases[i], "quantity": str(Quantity.VALUE)}, value)
            pending.add({"step": step, **bases[i], "quantity": str(Quantity.DELTA_INIT)}, delta)
