"""Observer: forward/backward hooks and scan probes that record x, y and their updates.

Usage (the coordinate-check loop of runs.worker):

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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ssmscope.probes.schema import Quantity, Site
from ssmscope.probes.stats import summarize, summarize_channels, summarize_param
from ssmscope.ssm.model import MambaLM, MambaMixer
from ssmscope.ssm.roles import role_of, split_name
from ssmscope.ssm.scan import ScanInputs, StateProbe

# Parameter groups for the per-group update probe: role names moved together (all layers).
UPDATE_GROUPS: dict[str, tuple[str, ...]] = {
    "W_B": ("x_proj_B",),
    "W_C": ("x_proj_C",),
    "dt_path": ("x_proj_dt", "dt_proj_weight", "dt_proj_bias"),
    "A_log": ("A_log",),
    "upstream": ("embedding", "norm", "in_proj", "conv_weight", "conv_bias"),
}


class _LayerTap:
    """What one mixer's hooks captured during the armed forward/backward."""

    def __init__(self) -> None:
        self.u: Tensor | None = None
        self.y: Tensor | None = None
        self.block_out: Tensor | None = None
        self.grad_y: dict[str, float] | None = None


class Observer:
    """Attach to a MambaLM, arm on logged steps, collect records (see module docstring)."""

    def __init__(self, model: MambaLM, *, grads: bool = True, params: bool = True, state_prev: bool = False):
        """`state_prev` adds Δx against the previous armed step: a third state recurrence per layer
        (the scan reruns the reference's), so it is off by default; Δ of y, C·x and the block
        output against the previous step cost nothing and are always recorded."""
        self.model = model
        self.grads = grads
        self.params = params
        self.state_prev = state_prev
        self.mixers: list[MambaMixer] = model.mixers
        self._handles: list[Any] = []
        self._taps = [_LayerTap() for _ in self.mixers]
        self._armed_step: int | None = None
        self._first: dict[str, list] | None = None  # per layer: init references
        self._prev: dict[str, list] | None = None
        self._init_params: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self) -> Observer:
        for layer, mixer in enumerate(self.mixers):
            tap = self._taps[layer]
            self._handles.append(mixer.ssm_input.register_forward_hook(self._capture(tap, "u")))
            self._handles.append(mixer.ssm_output.register_forward_hook(self._capture(tap, "y")))
            self._handles.append(mixer.register_forward_hook(self._capture(tap, "block_out")))
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
                    tap.grad_y = summarize(g)

                output.register_hook(grad_hook)

        return hook

    # ------------------------------------------------------------------ arming
    def arm(self, step: int) -> None:
        """Make the next forward (and backward) on the model record for `step`."""
        self._armed_step = step
        for layer, mixer in enumerate(self.mixers):
            refs: dict[str, ScanInputs] = {}
            if self._first is not None:
                refs["init"] = self._first["inputs"][layer]
                if self.state_prev:
                    refs["prev"] = self._prev["inputs"][layer]
            mixer.probe = StateProbe(references=refs, want_grad=self.grads)
            self._taps[layer].__init__()
        if self.params and self._init_params is None:
            self._init_params = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    # ------------------------------------------------------------------ collecting
    def collect(self) -> list[dict[str, Any]]:
        """Records of the armed step (call after backward when grads are on); disarms."""
        step = self._armed_step
        if step is None:
            raise RuntimeError("Observer.collect() called without arm(step) before the forward")
        records: list[dict[str, Any]] = []
        current: dict[str, list] = {"inputs": [], "y": [], "cx": [], "block_out": []}
        for layer, mixer in enumerate(self.mixers):
            probe, tap = mixer.probe, self._taps[layer]
            if probe is None or probe.inputs is None or tap.y is None:
                raise RuntimeError("the armed forward did not reach layer "
                                   f"{layer}; arm() must precede the model's forward")
            n_state = probe.inputs.A.shape[1]
            cx = tap.y - tap.u * mixer.D.detach()
            acts = {"y": tap.y, "cx": cx, "block_out": tap.block_out}

            def add(site: Site, quantity: Quantity, rec: dict[str, float], layer=layer) -> None:
                records.append({"step": step, "layer": layer, "site": str(site),
                                "quantity": str(quantity), "group": "", **rec})

            add(Site.X, Quantity.VALUE, summarize_channels(probe.state_sumsq, n_state, probe.state_maxabs))
            for name, v in acts.items():
                add(Site(name), Quantity.VALUE, summarize(v))
            for ref_name, quantity in (("init", Quantity.DELTA_INIT), ("prev", Quantity.DELTA_PREV)):
                if self._first is None:  # the first armed step is the reference itself: Δ = 0
                    zero = torch.zeros_like(probe.state_sumsq)
                    if quantity == Quantity.DELTA_INIT or self.state_prev:
                        add(Site.X, quantity, summarize_channels(zero, n_state, 0.0))
                    for name, v in acts.items():
                        add(Site(name), quantity, summarize(torch.zeros_like(v)))
                    continue
                if ref_name in probe.delta_sumsq:
                    add(Site.X, quantity, summarize_channels(
                        probe.delta_sumsq[ref_name], n_state, probe.delta_maxabs[ref_name]))
                source = self._first if ref_name == "init" else self._prev
                for name, v in acts.items():
                    add(Site(name), quantity, summarize(v - source[name][layer]))
            if self.grads and tap.grad_y is not None:
                add(Site.GRAD_Y, Quantity.VALUE, tap.grad_y)
            if self.grads and probe.grad_sumsq is not None:
                add(Site.GRAD_X, Quantity.VALUE, summarize_channels(
                    probe.grad_sumsq, n_state, probe.grad_sumsq.max().sqrt()))
            current["inputs"].append(probe.inputs)
            for name, v in acts.items():
                current[name].append(v)
            mixer.probe = None
        if self.params:
            records.extend(self._param_records(step))
        if self._first is None:
            self._first = current
        self._prev = current
        self._armed_step = None
        return records

    def _param_records(self, step: int) -> list[dict[str, Any]]:
        assert self._init_params is not None
        out = []
        for name, p in self.model.named_parameters():
            layer, _ = split_name(name)
            role = str(role_of(name))
            base = {"step": step, "layer": -1 if layer is None else layer, "site": str(Site.PARAM),
                    "group": f"{role}:{name}"}
            out.append({**base, "quantity": str(Quantity.VALUE), **summarize_param(p)})
            out.append({**base, "quantity": str(Quantity.DELTA_INIT),
                        **summarize_param(p.detach() - self._init_params[name])})
        return out

    # ------------------------------------------------------------------ per-group updates
    def group_update_records(self, step: int, inputs: Tensor) -> list[dict[str, Any]]:
        """Δx, Δy, Δ(C·x) from init with only one parameter group moved to its current value.

        Recomputes the probe batch once per group in UPDATE_GROUPS with every other
        parameter at its initial value, so that a flat total cannot hide a growing part.
        Needs a previous collect() (the init references) and params=True.
        """
        if self._first is None or self._init_params is None:
            raise RuntimeError("group updates need the init step collected first")
        current = {n: p.detach() for n, p in self.model.named_parameters()}
        records: list[dict[str, Any]] = []
        for group, roles in UPDATE_GROUPS.items():
            mixed = {n: (current[n] if str(role_of(n)) in roles else self._init_params[n]) for n in current}
            with self._armed_for_group(), torch.no_grad():
                functional_call(self.model, mixed, (inputs,))
                for layer, mixer in enumerate(self.mixers):
                    probe, tap = mixer.probe, self._taps[layer]
                    n_state = probe.inputs.A.shape[1]
                    cx = tap.y - tap.u * mixed[f"layers.{layer}.mixer.D"]
                    base = {"step": step, "layer": layer, "quantity": str(Quantity.DELTA_INIT),
                            "group": group}
                    records.append({**base, "site": str(Site.X), **summarize_channels(
                        probe.delta_sumsq["init"], n_state, probe.delta_maxabs["init"])})
                    for name, v in (("y", tap.y), ("cx", cx), ("block_out", tap.block_out)):
                        records.append({**base, "site": name, **summarize(v - self._first[name][layer])})
        return records

    @contextmanager
    def _armed_for_group(self) -> Iterator[None]:
        self._armed_step = -1
        for layer, mixer in enumerate(self.mixers):
            mixer.probe = StateProbe(references={"init": self._first["inputs"][layer]})
            self._taps[layer].__init__()
        try:
            yield
        finally:
            for mixer in self.mixers:
                mixer.probe = None
            self._armed_step = None
