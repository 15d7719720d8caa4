"""HFObserver: the Observer's records for transformers' Mamba, from the scan recomputed by ssmscope.

transformers' mixer runs its scan inside one function, so no hook sees the latent state x. Hooks on
the mixer's own modules see everything the scan was given: the input of `x_proj` is u (after the
convolution and SiLU), its output holds (dt_low, B, C); with `dt_proj`'s weight and bias, A_log and D
that is the whole scan. On an armed forward the observer reruns it with ssmscope's scan and a
StateProbe (x, Δx against the first armed step, the adjoint ∂L/∂x), and checks the recomputed y
against the model's own: y ⊙ SiLU(z) must equal what the mixer feeds `out_proj` (z: the gate half of
`in_proj`'s output) to `rtol` of its largest entry, else RecomputeMismatch. The adjoint comes from
backpropagating ∂L/∂y, read off `out_proj`'s input during the model's backward, through the
recomputed scan. The model's own numbers are never changed: the recomputation is a side branch.

The records are the Observer's (the same class does the bookkeeping, through a view that presents
the transformers model as ssmscope's mixers and ssmscope-named parameters, x_proj split into its dt,
B and C row blocks), so a transformers Mamba and an ssmscope MambaLM with the same weights give the
same records (tests/test_hf_adapter.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ssmscope.probes.observer import Observer
from ssmscope.ssm.adapters.hf import (
    DISCRETIZATION,
    HFWidths,
    check_adaptable,
    hf_mixers,
    named_canonical_parameters,
)
from ssmscope.ssm.adapters.hf_mamba2 import is_hf_mamba2
from ssmscope.ssm.config import ScanBackend
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.scan import StateProbe, selective_scan

DEFAULT_RTOL = 1e-4
"""Largest accepted |y⊙SiLU(z) − out_proj input| / max|out_proj input| (at least 4 ulp of the model's dtype):
the two scans differ by fp32 rounding (transformers computes A, D and the Δ bias in fp32 even in an fp64
model), measured below 1e-7 in fp32 and 1e-8 in fp64."""


HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Model dtypes whose scan ssmscope recomputes in float32, as transformers' own scan does."""


class RecomputeMismatch(RuntimeError):
    """ssmscope's recomputed scan does not reproduce the transformers mixer's output."""


class _HookPoint:
    """Stands in for the nn.Identity hook points of ssmscope's mixer: `fire(value)` calls its forward hooks."""

    def __init__(self) -> None:
        self._hooks: OrderedDict[int, Callable] = OrderedDict()  # weak-referenceable, as RemovableHandle needs

    def register_forward_hook(self, hook: Callable) -> RemovableHandle:
        handle = RemovableHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle

    def fire(self, value: Tensor) -> None:
        for hook in list(self._hooks.values()):
            hook(self, (value,), value)


class _Capture:
    """What one transformers mixer's hooks saw during the armed forward (and backward)."""

    def __init__(self) -> None:
        self.u: Tensor | None = None  # x_proj input (B, L, ED)
        self.x_proj_out: Tensor | None = None  # (B, L, R + 2N)
        self.z: Tensor | None = None  # the gate (B, L, ED)
        self.y: Tensor | None = None  # the recomputed y, with its graph (for the adjoint)
        self.grad_gated: Tensor | None = None  # ∂L/∂(y ⊙ SiLU(z)), from the model's backward


class _MixerView:
    """A transformers MambaMixer as the Observer sees an ssmscope mixer: hook points, `probe`, `D`."""

    def __init__(self, mixer: nn.Module) -> None:
        self.mixer = mixer
        self.ssm_input = _HookPoint()
        self.ssm_output = _HookPoint()
        self.probe: StateProbe | None = None
        self.capture = _Capture()

    @property
    def D(self) -> Tensor:
        return self.mixer.D

    def register_forward_hook(self, hook: Callable) -> RemovableHandle:
        return self.mixer.register_forward_hook(hook)


class _ModelView:
    """A transformers Mamba as the Observer sees a MambaLM: `mixers` and ssmscope-named parameters."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.mixers = [_MixerView(m) for m in hf_mixers(model)]

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return named_canonical_parameters(self.model)


class HFObserver(Observer):
    """The Observer for transformers' MambaForCausalLM / MambaModel (see the module docstring).

    Use it exactly like Observer: `with HFObserver(model) as obs: obs.arm(step); forward; backward;
    records = obs.collect()`. `scan` picks ssmscope's backend for the recomputation; `rtol` bounds the
    check of y against the model. `check_errors` holds, per layer, the last relative difference.
    """

    def __init__(self, model: nn.Module, *, grads: bool = True, params: bool = True, state_prev: bool = False,
                 scan: ScanBackend | str = ScanBackend.AUTO, rtol: float = DEFAULT_RTOL):
        if is_hf_mamba2(model):
            raise ConfigError("HFObserver observes transformers' Mamba; for Mamba-2 use "
                              "ssmscope.probes.hf_mamba2.HFMamba2Observer")
        check_adaptable(model)
        self.hf_model = model
        self.widths = HFWidths.of(model)
        self.scan = ScanBackend(scan)
        self.rtol = rtol
        self.check_errors: list[float | None] = []
        self._hf_handles: list[RemovableHandle] = []
        super().__init__(_ModelView(model), grads=grads, params=params, state_prev=state_prev)
        self.check_errors = [None] * len(self.mixers)

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self) -> HFObserver:
        super().__enter__()
        for layer, view in enumerate(self.mixers):
            m = view.mixer
            self._hf_handles += [m.in_proj.register_forward_hook(self._on_in_proj(view)),
                                 m.x_proj.register_forward_hook(self._on_x_proj(view)),
                                 m.out_proj.register_forward_pre_hook(self._on_out_proj(view, layer))]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hf_handles:
            h.remove()
        self._hf_handles.clear()
        for view in self.mixers:
            view.capture = _Capture()
        super().__exit__(*exc)

    # ------------------------------------------------------------------ hooks on transformers' modules
    def _on_in_proj(self, view: _MixerView) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self._armed_step is not None:
                view.capture.z = output[..., self.widths.n_u:].detach()

        return hook

    def _on_x_proj(self, view: _MixerView) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self._armed_step is not None:
                view.capture.u, view.capture.x_proj_out = args[0].detach(), output.detach()

        return hook

    def _on_out_proj(self, view: _MixerView, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if self._armed_step is None:
                return
            gated = args[0]
            y = self._recompute(view)
            self._check(view, layer, y, gated)
            if self.grads and gated.requires_grad and y.requires_grad:
                def keep(g: Tensor) -> None:
                    view.capture.grad_gated = g.detach()

                gated.register_hook(keep)

        return hook

    def _recompute(self, view: _MixerView) -> Tensor:
        """y = ssmscope's scan on the mixer's own scan inputs, filling the view's StateProbe."""
        cap, m, w = view.capture, view.mixer, self.widths
        if cap.u is None or cap.x_proj_out is None:
            raise RecomputeMismatch("x_proj did not run in this forward: transformers took its fused kernel path "
                                    "(mamba_inner_fn, CUDA with mamba-ssm kernels), which no module hook sees; "
                                    "observe the model on CPU or without the kernels")
        dt_low, B, C = torch.split(cap.x_proj_out, [w.rank, w.n_x, w.n_x], dim=-1)
        dt = F.linear(dt_low, m.dt_proj.weight.detach())  # (B, L, ED); Δ = softplus(dt + bias) inside the scan
        work = torch.float32 if cap.u.dtype in HALF_DTYPES else cap.u.dtype  # transformers' scan runs in fp32 too
        A = -torch.exp(m.A_log.detach().to(work))
        u = cap.u.to(work).clone().requires_grad_(self.grads)  # a leaf: the adjoint flows back along the states
        view.ssm_input.fire(u)
        with torch.enable_grad():
            y = selective_scan(u, dt.to(work), A, B.to(work), C.to(work), m.D.detach().to(work),
                               m.dt_proj.bias.detach().to(work), discretization=DISCRETIZATION, backend=self.scan,
                               probe=view.probe)
        view.ssm_output.fire(y)
        cap.y = y
        return y

    def _check(self, view: _MixerView, layer: int, y: Tensor, gated: Tensor) -> None:
        z = view.capture.z
        if z is None:
            raise RecomputeMismatch(f"layer {layer}: in_proj did not run before out_proj; not a Mamba mixer forward")
        mine = y.detach().double() * F.silu(z.double())
        theirs = gated.detach().double()
        err = ((mine - theirs).abs().max() / theirs.abs().max().clamp_min(torch.finfo(torch.float64).tiny)).item()
        self.check_errors[layer] = err
        allowed = max(self.rtol, 4 * torch.finfo(gated.dtype).eps)  # a half-precision out_proj input is rounded
        if not err <= allowed:
            raise RecomputeMismatch(f"layer {layer}: ssmscope's recomputed scan differs from the model's by {err:.2e} "
                                    f"(relative to its largest output; allowed {allowed:.0e}): the mixer does not "
                                    "compute what transformers' Mamba scan computes (a changed forward, or a mask)")

    # ------------------------------------------------------------------ collecting
    def collect(self) -> list[dict[str, Any]]:
        """Records of the armed step: first the adjoint (∂L/∂y through the recomputed scans), then as Observer."""
        for view in self.mixers:
            cap = view.capture
            if self.grads and cap.y is not None and cap.grad_gated is not None and cap.y.requires_grad:
                grad_y = cap.grad_gated * F.silu(cap.z.to(cap.grad_gated.dtype))
                torch.autograd.backward(cap.y, grad_y.to(cap.y.dtype))
            view.capture = _Capture()
        return super().collect()

    def group_update_records(self, step: int, inputs: Tensor) -> list[dict[str, Any]]:
        raise NotImplementedError("per-group update probes need ssmscope's MambaLM (they rerun the model with "
                                  "mixed parameters); they are not available for a transformers model")
