"""HFMamba2Observer: Mamba2Observer's records for transformers' Mamba-2, from the SSD scan recomputed by ssmscope.

transformers' Mamba2Mixer runs its convolution and scan inside functions (causal_conv1d_forward,
mamba2_scan_forward), so no module hook sees the conv's output or the state h. Hooks on the mixer's own modules
see all the scan was given: `in_proj`'s output holds z (the gate), xBC (the conv's input) and dt; with the
conv's weights, dt_bias, A_log, D and time_step_limit that is the whole scan. On an armed forward the observer
recomputes conv + SiLU and the SSD scan with ssmscope (ssm.scan.ssd) and hands its inputs to an SSDStateProbe
(the state, Δh against the first armed step, the adjoint from the model's own ∂L/∂y), then checks the
recomputation against the model twice: the scan output y against what the mixer feeds its gated norm
(`mixer.norm`'s input), and norm(y·SiLU(z)) against what the mixer feeds `out_proj`, each to `rtol` of its largest
entry, else RecomputeMismatch. The model's own numbers are never changed: the recomputation is a side branch.

The records are Mamba2Observer's (the same class does the bookkeeping, through a view presenting the
transformers model as Mamba2LM's mixers — in_proj's five row blocks as hook points — and Mamba2LM-named
parameters), so a transformers Mamba-2 and a Mamba2LM with the same weights give the same records
(tests/test_hf_mamba2.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ssmscope.probes.hf import DEFAULT_RTOL, HALF_DTYPES, RecomputeMismatch, _HookPoint
from ssmscope.probes.mamba2 import Mamba2Observer
from ssmscope.ssm.adapters.hf_mamba2 import HFMamba2Widths, canonical_params, check_adaptable, hf_mamba2_mixers
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import IN_PROJ_BLOCKS, SSD_SCANS
from ssmscope.ssm.scan.ssd import ssd_chunked, ssd_reference
from ssmscope.ssm.scan.ssd_probe import SSDStateProbe


class _InProjView:
    """in_proj's five row blocks as hook points, as Mamba2LM's InProjection holds them as modules."""

    def __init__(self) -> None:
        for name in IN_PROJ_BLOCKS:
            setattr(self, name, _HookPoint())


class _Capture:
    """What one transformers mixer's hooks saw during the armed forward."""

    def __init__(self) -> None:
        self.projected: Tensor | None = None  # in_proj's output (Bt, L, z | xBC | dt)
        self.y: Tensor | None = None  # the model's scan output, the gated norm's input (Bt, L, d_inner)


class _MixerView:
    """A transformers Mamba2Mixer as Mamba2Observer sees a Mamba2Mixer: hook points, `probe`, its forward hook."""

    def __init__(self, mixer: nn.Module) -> None:
        self.mixer = mixer
        self.in_proj = _InProjView()
        self.ssm_output = _HookPoint()
        self.probe: SSDStateProbe | None = None
        self.capture = _Capture()

    def register_forward_hook(self, hook: Callable) -> RemovableHandle:
        return self.mixer.register_forward_hook(hook)


class _ModelView:
    """A transformers Mamba-2 as Mamba2Observer sees a Mamba2LM: `mixers` and Mamba2LM-named parameters."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.mixers = [_MixerView(m) for m in hf_mamba2_mixers(model)]

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        params = dict(self.model.named_parameters())
        for cp in canonical_params(self.model):
            yield cp.name, cp.view(params)


class HFMamba2Observer(Mamba2Observer):
    """Mamba2Observer for transformers' Mamba2ForCausalLM / Mamba2Model (see the module docstring).

    Use it as Mamba2Observer: `with HFMamba2Observer(model) as obs: obs.arm(step); forward; backward; records =
    obs.collect()`. `scan` picks ssmscope's SSD form for the recomputation (chunked or reference); `rtol` bounds
    the checks. `check_errors` holds, per layer, the last relative difference (the larger of the two checks).
    """

    def __init__(self, model: nn.Module, *, grads: bool = True, params: bool = True, state_prev: bool = False,
                 param_every: int = 1, scan: str = "chunked", rtol: float = DEFAULT_RTOL):
        check_adaptable(model)
        if scan not in SSD_SCANS:
            raise ConfigError(f"scan={scan!r}; allowed: {', '.join(SSD_SCANS)}")
        self.hf_model = model
        self.widths = HFMamba2Widths.of(model)
        self.scan, self.rtol = scan, rtol
        self._hf_handles: list[RemovableHandle] = []
        super().__init__(_ModelView(model), grads=grads, params=params, state_prev=state_prev,  # type: ignore[arg-type]
                         param_every=param_every)
        self.check_errors: list[float | None] = [None] * len(self.mixers)

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self) -> HFMamba2Observer:
        super().__enter__()
        for layer, view in enumerate(self.mixers):
            m = view.mixer
            self._hf_handles += [m.in_proj.register_forward_hook(self._on_in_proj(view)),
                                 m.norm.register_forward_pre_hook(self._on_norm(view)),
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
        rows = self.widths.in_proj_rows()

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self._armed_step is None:
                return
            view.capture = _Capture()
            view.capture.projected = output.detach()
            for name in IN_PROJ_BLOCKS:
                getattr(view.in_proj, name).fire(output[..., rows[name]])

        return hook

    def _on_norm(self, view: _MixerView) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if self._armed_step is None:
                return
            y = args[0]
            view.capture.y = y.detach()
            view.ssm_output.fire(y)  # Mamba2Observer: the record y and ∂L/∂y
            if self.grads and y.requires_grad:
                w = self.widths
                y.register_hook(lambda g: view.probe.on_grad_y(g.unflatten(-1, (w.nheads, w.headdim)))
                                if view.probe is not None and view.probe.inputs is not None else None)

        return hook

    def _on_out_proj(self, view: _MixerView, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if self._armed_step is not None:
                self._check(view, layer, self._recompute(view), args[0])

        return hook

    # ------------------------------------------------------------------ the recomputation
    def _recompute(self, view: _MixerView) -> tuple[Tensor, Tensor]:
        """(y, gated): ssmscope's conv + SSD scan on the mixer's own in_proj output, and its gated norm; fills the
        view's SSDStateProbe."""
        cap, m, w = view.capture, view.mixer, self.widths
        if cap.projected is None or cap.y is None:
            raise RecomputeMismatch("in_proj or the gated norm did not run in this forward: transformers took a fused "
                                    "kernel path (mamba_split_conv1d_scan_combined), which no module hook sees; "
                                    "observe the model on CPU or without the kernels")
        work = torch.float32 if cap.projected.dtype in HALF_DTYPES else cap.projected.dtype
        proj = cap.projected.to(work)
        bt, length, _ = proj.shape
        gn = w.ngroups * w.n_x
        z, xbc, dt = proj.split([w.n_u, w.n_u + 2 * gn, w.nheads], dim=-1)
        conv = m.conv1d
        bias = None if conv.bias is None else conv.bias.detach().to(work)
        xbc = F.conv1d(xbc.transpose(1, 2), conv.weight.detach().to(work), bias, padding=conv.kernel_size[0] - 1,
                       groups=xbc.shape[-1])[..., :length]
        x, B, C = F.silu(xbc.transpose(1, 2)).split([w.n_u, gn, gn], dim=-1)
        delta = F.softplus(dt + m.dt_bias.detach().to(work))
        low, high = (float(v) for v in m.time_step_limit)
        if (low, high) != (0.0, math.inf):
            delta = delta.clamp(low, high)
        args = (x.reshape(bt, length, w.nheads, w.headdim), delta, -torch.exp(m.A_log.detach().to(work)),
                B.reshape(bt, length, w.ngroups, w.n_x), C.reshape(bt, length, w.ngroups, w.n_x),
                m.D.detach().to(work))
        with torch.no_grad():
            y = (ssd_chunked(*args, chunk_size=min(int(m.chunk_size), length)) if self.scan == "chunked"
                 else ssd_reference(*args))
            if view.probe is not None:
                view.probe.observe(*args, y)
            y = y.reshape(bt, length, w.n_u)
            g = (y * F.silu(z)).unflatten(-1, (-1, m.norm.group_size))
            g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + m.norm.variance_epsilon)
            gated = g.flatten(-2) * m.norm.weight.detach().to(work)
        return y, gated

    def _check(self, view: _MixerView, layer: int, mine: tuple[Tensor, Tensor], gated: Tensor) -> None:
        theirs = (view.capture.y, gated.detach())
        errs = [((a.double() - b.double()).abs().max()
                 / b.double().abs().max().clamp_min(torch.finfo(torch.float64).tiny)).item()
                for a, b in zip(mine, theirs, strict=True)]
        err = max(errs)
        self.check_errors[layer] = err
        allowed = max(self.rtol, 4 * torch.finfo(gated.dtype).eps)  # a half-precision out_proj input is rounded
        if not err <= allowed:
            where = "scan output y" if errs[0] >= errs[1] else "gated norm's output"
            raise RecomputeMismatch(f"layer {layer}: ssmscope's recomputed {where} differs from the model's by "
                                    f"{err:.2e} (relative to its largest entry; allowed {allowed:.0e}): the mixer does "
                                    "not compute what transformers' Mamba-2 computes (a changed forward, or a mask)")

    def collect(self) -> list[dict[str, Any]]:
        """Records of the armed step, as Mamba2Observer (call after the backward when grads are on)."""
        records = super().collect()
        for view in self.mixers:
            view.capture = _Capture()
        return records


__all__ = ["HFMamba2Observer", "RecomputeMismatch"]
