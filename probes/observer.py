"""Observer: forward/backward hooks and scan probes that record x, y and their updates.

Usage (the coordinate-check loop of runs.sweeps.worker):

    with Observer(model) as obs:
        for step in range(steps + 1):
            if logged(step):
                obs.arm(step)
            loss = loss_fn(model(batch))
            loss.backward()
            if logged(step):
                records = obs.collect()
            ...

Per S6 layer and armed step it records, on whatever batch the armed forward sees (the fixed
probe batch): the latent state x (from inside the scan, ssm.scan.StateProbe), the S6 output
y (before the gate), the readout C·x = y − D⊙u, the block output, and after backward
∂L/∂y and the adjoint ∂L/∂x; Δ of each relative to the first armed step ("init") and to the
previous armed step ("prev"); and per parameter ‖W‖ and ‖W − W_init‖. Only the probe batch's
(B, L, ED) tensors and the scan's inputs are kept, never (B, L, ED, N) states. Hooks only
read: the model's numbers are unchanged.

Cost. The latent-state sums come from inside the scan (with the compiled scan, in the same
pass over the state as the forward and backward). Every other reduction of a logged step stays
on the device until collect() stacks them all and reads them with one `.tolist()`: one
synchronisation per logged step. Parameter norms (two reductions per parameter tensor) are
recorded on every logged step by default; `param_every=k` records them on every k-th logged
step only (the first logged step always), for long runs where they dominate the probe cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ssmscope.probes.base import ObserverBase, _Pending, _zero_record
from ssmscope.probes.schema import Quantity, Site
from ssmscope.probes.update_groups import UPDATE_GROUPS  # S6's groups; every family's in probes.update_groups
from ssmscope.ssm.model import MambaLM, MambaMixer
from ssmscope.ssm.scan import ScanInputs, StateProbe


class _LayerTap:
    """What one mixer's hooks captured during the armed forward/backward."""

    def __init__(self) -> None:
        self.u: Tensor | None = None
        self.y: Tensor | None = None
        self.block_out: Tensor | None = None
        self.grad_y: Tensor | None = None  # ∂L/∂y


class Observer(ObserverBase):
    """Attach to a MambaLM, arm on logged steps, collect records (see module docstring)."""

    def __init__(self, model: MambaLM, *, grads: bool = True, params: bool = True, state_prev: bool = False,
                 param_every: int = 1, readout: bool = False):
        """`state_prev` adds Δx against the previous armed step: a third state recurrence per layer
        (the scan reruns the reference's), so it is off by default; Δ of y, C·x and the block
        output against the previous step cost nothing and are always recorded. `param_every`:
        parameter records on every k-th collected step (the first one always); default 1, every one.
        `readout` adds the readout probes (_ReadoutTap): the logits and their change, and the embedding/readout
        gradient split by use — what a tied readout does under µP is read there."""
        super().__init__(model, grads=grads, params=params, state_prev=state_prev, param_every=param_every,
                         readout=readout)
        self.mixers: list[MambaMixer] = model.mixers
        self._taps = [_LayerTap() for _ in self.mixers]
        self._first: dict[str, list] | None = None  # per layer: init references
        self._prev: dict[str, list] | None = None

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self) -> Observer:
        for layer, mixer in enumerate(self.mixers):
            tap = self._taps[layer]
            self._handles.append(mixer.ssm_input.register_forward_hook(self._capture(tap, "u")))
            self._handles.append(mixer.ssm_output.register_forward_hook(self._capture(tap, "y")))
            self._handles.append(mixer.register_forward_hook(self._capture(tap, "block_out")))
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

    def _capture(self, tap: _LayerTap, what: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self._armed_step is None:
                return
            setattr(tap, what, output.detach())
            if what == "y" and self.grads and output.requires_grad:
                def grad_hook(g: Tensor) -> None:
                    tap.grad_y = g.detach()

                output.register_hook(grad_hook)

        return hook

    # ------------------------------------------------------------------ arming
    def _new_probe(self, references: dict[str, ScanInputs], want_grad: bool) -> StateProbe:
        return StateProbe(references=references, want_grad=want_grad)

    # ------------------------------------------------------------------ collecting
    def _layer_records(self, step: int, layer: int, probe: StateProbe, tap: _LayerTap, pending: _Pending,
                       current: dict[str, list]) -> None:
        """One S6 layer's records of a collected step (ObserverBase.collect), and its references for later steps."""
        n_state = probe.inputs.A.shape[1]
        cx = tap.y - tap.u * self.mixers[layer].D.detach()
        acts = {"y": tap.y, "cx": cx, "block_out": tap.block_out}

        def key(site: Site, quantity: Quantity) -> dict[str, Any]:
            return {"step": step, "layer": layer, "site": str(site), "quantity": str(quantity), "group": ""}

        pending.add_channels(key(Site.X, Quantity.VALUE), probe.state_sumsq, n_state, probe.state_maxabs)
        for name, v in acts.items():
            pending.add_activation(key(Site(name), Quantity.VALUE), v)
        for ref_name, quantity in (("init", Quantity.DELTA_INIT), ("prev", Quantity.DELTA_PREV)):
            if self._first is None:  # the first armed step is the reference itself: Δ = 0
                if quantity == Quantity.DELTA_INIT or self.state_prev:
                    pending.add(key(Site.X, quantity), _zero_record(probe.state_sumsq.shape, n_state))
                for name, v in acts.items():
                    pending.add(key(Site(name), quantity), _zero_record(v.shape, 1))
                continue
            if ref_name in probe.delta_sumsq:
                pending.add_channels(key(Site.X, quantity), probe.delta_sumsq[ref_name], n_state,
                                     probe.delta_maxabs[ref_name])
            source = self._first if ref_name == "init" else self._prev
            for name, v in acts.items():
                pending.add_activation(key(Site(name), quantity), v - source[name][layer])
        if self.grads and tap.grad_y is not None:
            pending.add_activation(key(Site.GRAD_Y, Quantity.VALUE), tap.grad_y)
        if self.grads and probe.grad_sumsq is not None:
            pending.add_channels(key(Site.GRAD_X, Quantity.VALUE), probe.grad_sumsq, n_state,
                                 probe.grad_sumsq.max().sqrt())
        current["inputs"].append(probe.inputs)
        for name, v in acts.items():
            current[name].append(v)

    # ------------------------------------------------------------------ per-group updates
    update_groups = UPDATE_GROUPS

    def _group_layer_records(self, step: int, layer: int, group: str, mixed: dict[str, Tensor],
                             pending: _Pending) -> None:
        """One layer's records of a per-group recompute (ObserverBase.group_update_records)."""
        probe, tap = self.mixers[layer].probe, self._taps[layer]
        cx = tap.y - tap.u * mixed[f"layers.{layer}.mixer.D"]
        base = {"step": step, "layer": layer, "quantity": str(Quantity.DELTA_INIT), "group": group}
        pending.add_channels({**base, "site": str(Site.X)}, probe.delta_sumsq["init"], probe.inputs.A.shape[1],
                             probe.delta_maxabs["init"])
        for name, v in (("y", tap.y), ("cx", cx), ("block_out", tap.block_out)):
            pending.add_activation({**base, "site": name}, v - self._first[name][layer])
