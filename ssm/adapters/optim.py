"""SGD and Adam/AdamW whose learning rate may differ between the rows of one parameter.

A fused weight such as transformers' `x_proj` (rows: dt_low | B | C) holds three roles that a
preset gives three learning rates; torch's optimizers have one learning rate per parameter group.
Here a group may carry `row_scale`, a 1-D tensor with one factor per row (dim 0) of each of its
parameters: the row's step is the group's `lr` times its factor. Without `row_scale` (or with every
factor 1) the arithmetic is torch's single-tensor path, operation for operation, so the updates are
bit-identical to torch.optim.SGD / Adam / AdamW on CPU (tests/test_hf_adapter.py checks it).

Only what the presets need: SGD with momentum, dampening, nesterov and (coupled) weight decay; Adam
with coupled and AdamW with decoupled weight decay; no amsgrad, maximize, foreach or fused paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ssmscope.ssm.errors import ConfigError

ROW_SCALE = "row_scale"
"""The param-group key holding the per-row learning-rate factors."""


def _row_factor(group: dict[str, Any], p: Tensor) -> Tensor | None:
    """The group's row factors shaped to broadcast against `p` (rows along dim 0), or None."""
    scale = group.get(ROW_SCALE)
    if scale is None:
        return None
    return scale.to(device=p.device, dtype=p.dtype).reshape(-1, *([1] * (p.dim() - 1)))


def _check_row_scales(groups: list[dict[str, Any]]) -> None:
    for i, group in enumerate(groups):
        scale = group.get(ROW_SCALE)
        if scale is None:
            continue
        if not isinstance(scale, Tensor) or scale.dim() != 1:
            raise ConfigError(f"param group {i}: {ROW_SCALE} must be a 1-D tensor (one factor per row)")
        for p in group["params"]:
            if p.dim() == 0 or p.shape[0] != scale.shape[0]:
                raise ConfigError(f"param group {i}: {ROW_SCALE} has {scale.shape[0]} factors but a parameter "
                                  f"has shape {tuple(p.shape)}; give one factor per row (dim 0)")


def _closure_loss(closure: Any) -> Tensor | None:
    """The loss `closure` recomputes with gradients on (torch.optim's step protocol), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class RowScaledSGD(torch.optim.Optimizer):
    """torch.optim.SGD (single-tensor path) with optional per-row learning-rate factors."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ConfigError(f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}; allowed: >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError("nesterov=True needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)
        _check_row_scales(self.param_groups)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if wd != 0:
                    grad = grad.add(p, alpha=wd)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                factor = _row_factor(group, p)
                p.add_(grad if factor is None else grad * factor, alpha=-lr)
        return loss


class RowScaledAdam(torch.optim.Optimizer):
    """torch.optim.Adam (`decoupled=False`) or AdamW (`decoupled=True`) with optional per-row factors.

    A row's factor scales its whole step, the decoupled weight decay included (AdamW decays by
    lr·factor·weight_decay, as a group with that learning rate would).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ConfigError(f"lr={lr}, eps={eps}, weight_decay={weight_decay}; allowed: >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"betas={betas}; allowed: each in [0, 1)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        super().__init__(params, defaults)
        _check_row_scales(self.param_groups)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0.0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1.0
                factor = _row_factor(group, p)
                if wd != 0:
                    if group["decoupled"] and factor is None:
                        p.mul_(1 - lr * wd)
                    elif group["decoupled"]:  # 1 − lr·wd·factor in float64, rounded once as torch does
                        scale64 = group[ROW_SCALE].to(device=p.device, dtype=torch.float64)
                        p.mul_((1 - lr * wd * scale64).to(p.dtype).reshape(factor.shape))
                    else:
                        grad = grad.add(p, alpha=wd)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"]
                step_size = lr / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                p.addcdiv_(exp_avg if factor is None else exp_avg * factor, denom, value=-step_size)
        return loss


def build_row_optimizer(groups: list[dict[str, Any]], optimizer: str, *, weight_decay: float = 0.0,
                        betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.0) -> torch.optim.Optimizer:
    """The row-scaled optimizer named `optimizer` (sgd | adam | adamw) over preset groups.

    Mirrors ssm.apply.build_optimizer (same arguments, same defaults), for groups that may carry
    `row_scale` (ssm.adapters.hf.preset_groups makes them).
    """
    if optimizer == "sgd":
        return RowScaledSGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay)
    if optimizer in ("adam", "adamw"):
        return RowScaledAdam(groups, lr=groups[0]["lr"], betas=betas, weight_decay=weight_decay,
                             decoupled=optimizer == "adamw")
    raise ConfigError(f"optimizer={optimizer!r}; allowed: sgd, adam, adamw")
