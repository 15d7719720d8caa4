"""Mamba2Observer: the Observer's records for a Mamba2LM (SSD), plus in_proj's per-slice updates.

Same API and loop as probes.observer.Observer (a context manager; arm(step) before the forward, collect() after
the backward), same records, per SSD layer and armed step:
  x          the SSD state h_t (B, L, H·P channels, N), from ssm.scan.ssd_probe.SSDStateProbe: value, Δ since the
             first armed step (delta_init) and, with `state_prev`, since the previous one (a third recurrence)
  y          the scan output h·C + D_h·x (hook `ssm_output`), before the gated norm
  cx         the state readout h·C = y − D_h·x
  block_out  the mixer's output
  grad_y     ∂L/∂y;  grad_x  the adjoint ∂L/∂h_t (from the probe, in backward)
  in_proj    each in_proj row block's output (hook `in_proj.<z|x|B|C|dt>`, group = the block): value, Δ since init
             and since the previous armed step. Which slices move, and how fast with width, is what tells the µP
             recipes for Mamba-2 apart.
and per parameter ‖W‖, ‖W − W_init‖ (group f"{role_of(name)}:{name}"), and with `readout` the readout probes.
`group_update_records(step, inputs)`: the per-group update probe, as Observer's — the probe batch recomputed once
per Mamba-2 update group (probes.update_groups: W_B → in_proj_B, W_C → in_proj_C, dt_path → in_proj_dt, dt_bias,
A_log, upstream → embedding, norm, in_proj_z, in_proj_x, conv1d) with only that group's parameters at their current
value, Δ from init of x (= h), y, cx and block_out with group = the group's name.
Hooks only read: the model's numbers are unchanged.

`observer_for(model, **kw)` returns the observer that fits a model: Observer for MambaLM, Mamba2Observer here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ssmscope.probes.base import ObserverBase, _Pending, _zero_record
from ssmscope.probes.observer import Observer
from ssmscope.probes.schema import Quantity, Site
from ssmscope.probes.update_groups import UPDATE_GROUPS_BY_FAMILY
from ssmscope.ssm.mamba2 import IN_PROJ_BLOCKS, Mamba2LM, Mamba2Mixer
from ssmscope.ssm.model import MambaLM
from ssmscope.ssm.roles import Family
from ssmscope.ssm.scan.ssd_probe import SSDInputs, SSDStateProbe

_ACTS = ("y", "cx", "block_out")
UPDATE_GROUPS = UPDATE_GROUPS_BY_FAMILY[Family.MAMBA2]
"""Mamba-2's parameter groups for group_update_records (group → roles)."""


def _readout_removed(y: Tensor, inp: SSDInputs) -> Tensor:
    """C·h = y − D_h·x (y itself when the scan has no D)."""
    return y - (inp.x * inp.D[:, None]).flatten(-2) if inp.D is not None else y


class _Mamba2Tap:
    """What one mixer's hooks captured during the armed forward/backward."""

    def __init__(self) -> None:
        self.y: Tensor | None = None
        self.block_out: Tensor | None = None
        self.grad_y: Tensor | None = None
        self.in_proj: dict[str, Tensor] = {}


class Mamba2Observer(ObserverBase):
    """Attach to a Mamba2LM, arm on logged steps, collect records (see module docstring)."""

    def __init__(self, model: Mamba2LM, *, grads: bool = True, params: bool = True, state_prev: bool = False,
                 param_every: int = 1, readout: bool = False):
        """Options as Observer's: `state_prev` adds Δh against the previous armed step (one more recurrence per
        layer); `param_every` records parameters on every k-th collected step; `readout` the readout probes."""
        super().__init__(model, grads=grads, params=params, state_prev=state_prev, param_every=param_every,
                         readout=readout)
        self.mixers: list[Mamba2Mixer] = model.mixers
        self._taps = [_Mamba2Tap() for _ in self.mixers]
        self._first: dict[str, list] | None = None  # per layer: the first armed step's inputs and activations
        self._prev: dict[str, list] | None = None

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self) -> Mamba2Observer:
        for tap, mixer in zip(self._taps, self.mixers, strict=True):
            self._handles.append(mixer.ssm_output.register_forward_hook(self._on_y(tap)))
            self._handles.append(mixer.register_forward_hook(self._store(lambda o, tap=tap: setattr(
                tap, "block_out", o))))
            for name in IN_PROJ_BLOCKS:
                self._handles.append(getattr(mixer.in_proj, name).register_forward_hook(self._store(
                    lambda o, tap=tap, name=name: tap.in_proj.__setitem__(name, o))))
        if self._readout is not None:
            self._handles += self._readout.attach(lambda: self._armed_step is not None)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mixer in self.mixers:
            mixer.probe = None
        self._armed_step = None

    def _store(self, put: Callable[[Tensor], None]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self._armed_step is not None:
                put(output.detach())

        return hook

    def _on_y(self, tap: _Mamba2Tap) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self._armed_step is None:
                return
            tap.y = output.detach()
            if self.grads and output.requires_grad:
                output.register_hook(lambda g: setattr(tap, "grad_y", g.detach()))

        return hook

    # ------------------------------------------------------------------ arming
    def _new_probe(self, references: dict[str, SSDInputs], want_grad: bool) -> SSDStateProbe:
        return SSDStateProbe(references=references, want_grad=want_grad)

    # ------------------------------------------------------------------ collecting
    current_keys = ("inputs", "y", "cx", "block_out", "in_proj")

    def _layer_records(self, step: int, layer: int, probe: SSDStateProbe, tap: _Mamba2Tap, pending: _Pending,
                       current: dict[str, list]) -> None:
        inp = probe.inputs
        assert inp is not None and tap.y is not None
        n_state = inp.B.shape[-1]
        cx = _readout_removed(tap.y, inp)
        acts = {"y": tap.y, "cx": cx, "block_out": tap.block_out}

        def key(site: Site, quantity: Quantity, group: str = "") -> dict[str, Any]:
            return {"step": step, "layer": layer, "site": str(site), "quantity": str(quantity), "group": group}

        pending.add_channels(key(Site.X, Quantity.VALUE), probe.state_sumsq, n_state, probe.state_maxabs)
        for name, v in acts.items():
            pending.add_activation(key(Site(name), Quantity.VALUE), v)
        for name, v in tap.in_proj.items():
            pending.add_activation(key(Site.IN_PROJ, Quantity.VALUE, name), v)
        for ref_name, quantity in (("init", Quantity.DELTA_INIT), ("prev", Quantity.DELTA_PREV)):
            if self._first is None:  # the first armed step is the reference itself: Δ = 0
                if quantity == Quantity.DELTA_INIT or self.state_prev:
                    pending.add(key(Site.X, quantity), _zero_record(probe.state_sumsq.shape, n_state))
                for name, v in acts.items():
                    pending.add(key(Site(name), quantity), _zero_record(v.shape, 1))
                for name, v in tap.in_proj.items():
                    pending.add(key(Site.IN_PROJ, quantity, name), _zero_record(v.shape, 1))
                continue
            if ref_name in probe.delta_sumsq:
                pending.add_channels(key(Site.X, quantity), probe.delta_sumsq[ref_name], n_state,
                                     probe.delta_maxabs[ref_name])
            source = self._first if ref_name == "init" else self._prev
            for name, v in acts.items():
                pending.add_activation(key(Site(name), quantity), v - source[name][layer])
            for name, v in tap.in_proj.items():
                pending.add_activation(key(Site.IN_PROJ, quantity, name), v - source["in_proj"][layer][name])
        if self.grads and tap.grad_y is not None:
            pending.add_activation(key(Site.GRAD_Y, Quantity.VALUE), tap.grad_y)
        if self.grads and probe.grad_sumsq is not None:
            pending.add_channels(key(Site.GRAD_X, Quantity.VALUE), probe.grad_sumsq, n_state, probe.grad_maxabs)
        current["inputs"].append(inp)
        for name, v in acts.items():
            current[name].append(v)
        current["in_proj"].append(dict(tap.in_proj))

    # ------------------------------------------------------------------ per-group updates
    update_groups = UPDATE_GROUPS

    def _group_layer_records(self, step: int, layer: int, group: str, mixed: dict[str, Tensor],
                             pending: _Pending) -> None:
        """One layer's records of a per-group recompute with Mamba-2's groups (ObserverBase.group_update_records):
        Σ(h − h_init)² against the init step's scan inputs, and Δ of y, C·h and the block output."""
        probe, tap = self.mixers[layer].probe, self._taps[layer]
        inp = probe.inputs
        base = {"step": step, "layer": layer, "quantity": str(Quantity.DELTA_INIT), "group": group}
        pending.add_channels({**base, "site": str(Site.X)}, probe.delta_sumsq["init"], inp.B.shape[-1],
                             probe.delta_maxabs["init"])
        acts = {"y": tap.y, "cx": _readout_removed(tap.y, inp), "block_out": tap.block_out}
        for name, v in acts.items():
            pending.add_activation({**base, "site": name}, v - self._first[name][layer])


def observer_for(model: nn.Module, **kw: Any) -> Observer | Mamba2Observer:
    """The observer of a model: Observer for a MambaLM, Mamba2Observer for a Mamba2LM (options passed on)."""
    if isinstance(model, Mamba2LM):
        return Mamba2Observer(model, **kw)
    if isinstance(model, MambaLM):
        return Observer(model, **kw)
    raise TypeError(f"no observer for {type(model).__name__}; allowed: MambaLM, Mamba2LM")
