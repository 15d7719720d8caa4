"""The one training-and-probing loop: a sweep's worker and coord_check run every run through `train_and_probe`.

Per step s = 0 … steps: on a logged step (every `log_every`, and the last) arm the observer; with a
fixed batch the training pass on it is the probe pass, otherwise the probe batch gets a forward and
backward of its own first; then the training loss, backward, the records (and, with group probes,
the per-group update records), the held-out loss when due, and `optimizer.step()` — so the records at
step s describe the model after s updates. A non-finite loss or probe record stops the run
("diverged"), keeping everything up to it. `next_token_loss` is the one language-model loss.
Imports torch and ssm/probes only (the worker path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmscope.probes.stats import is_finite_record
from ssmscope.runs.store.schema import RunStatus
from ssmscope.ssm.adapters.hf import is_hf_mamba
from ssmscope.ssm.errors import ConfigError

LossFn = Callable[[nn.Module, Any], Tensor]
"""(model, batch) → scalar loss."""
ProgressFn = Callable[[int, int], None]
"""(steps done, total steps), after every finite step."""


class Probe(Protocol):
    """What the loop needs of an observer (probes.Observer, probes.hf.HFObserver)."""

    def __enter__(self) -> Probe: ...
    def __exit__(self, *exc: object) -> None: ...
    def arm(self, step: int) -> None: ...
    def collect(self) -> list[dict[str, Any]]: ...
    def group_update_records(self, step: int, inputs: Tensor) -> list[dict[str, Any]]: ...


def next_token_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Next-token cross entropy on token ids (B, L+1): inputs ids[:, :-1], targets ids[:, 1:].

    transformers' Mamba is called as transformers calls it (input_ids=, no cache) and its `.logits` read; any
    other model (ssmscope's MambaLM, a family of one's own) as model(inputs), its output the logits (or an object
    with .logits). Half-precision logits are upcast to fp32 for the loss (a no-op in fp32)."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
        raise ConfigError(f"a batch must be token ids of shape (batch, length + 1), got "
                          f"{tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__}; "
                          "for other batches pass loss=")
    out = model(input_ids=ids[:, :-1], use_cache=False) if is_hf_mamba(model) else model(ids[:, :-1])
    logits = out if isinstance(out, Tensor) else out.logits
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def mean_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> float:
    """The mean loss over held-out batches, without gradients (the eval loss)."""
    with torch.no_grad():
        losses = [loss_fn(model, b).item() for b in batches]
    return sum(losses) / len(losses)


@dataclass(frozen=True)
class Schedule:
    """When the loop probes and evaluates."""

    steps: int
    """Optimizer steps; probes at step s see the model after s updates."""
    log_every: int
    """Probe every this many steps (and at the last)."""
    eval_every: int = 0
    """Held-out loss every this many steps (0: never)."""
    group_probes: bool = False
    """Per-parameter-group update records on logged steps after the first (probes.Observer.group_update_records)."""

    def logged(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.steps


@dataclass
class RunOutcome:
    """What one run measured: its status, last finite step, probe records and loss rows."""

    status: RunStatus
    last_finite_step: int = -1
    probes: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)


def train_and_probe(model: nn.Module, optimizer: torch.optim.Optimizer, observer: Probe, *, loss_fn: LossFn,
                    probe_batch: Any, train_batch: Callable[[int], Any] | None, schedule: Schedule, lr: float,
                    eval_batches: Callable[[], Sequence[Any]] | None = None,
                    progress: ProgressFn | None = None) -> RunOutcome:
    """Train and probe one run (module docstring for the order of a step).

    Args:
        probe_batch: the batch logged steps probe (on the model's device).
        train_batch: step → the batch step trains on; None: the fixed batch, `probe_batch` itself, whose training
            pass is the probe pass.
        lr: the base learning rate, stored with every loss row.
        eval_batches: the held-out batches (made on first need) for the eval loss every schedule.eval_every steps.
    """
    fixed = train_batch is None
    out = RunOutcome(RunStatus.COMPLETED)
    held_out: Sequence[Any] | None = None
    with observer as obs:
        for step in range(schedule.steps + 1):
            logged = schedule.logged(step)
            batch = probe_batch if train_batch is None else train_batch(step)
            records: list[dict[str, Any]] = []
            if logged and not fixed:  # probe the probe batch in its own pass
                obs.arm(step)
                loss_fn(model, probe_batch).backward()
                records = obs.collect()
            elif logged:  # the training pass on the fixed batch is the probe pass
                obs.arm(step)
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if logged and fixed:
                records = obs.collect()
            if logged and schedule.group_probes and step > 0:
                records += obs.group_update_records(step, probe_batch[:, :-1])
            value = loss.item()
            finite = math.isfinite(value) and all(is_finite_record(r) for r in records)
            out.probes.extend(records)
            row = {"step": step, "train_loss": value, "eval_loss": None, "lr": lr}
            if eval_batches is not None and schedule.eval_every and step % schedule.eval_every == 0 and finite:
                held_out = held_out if held_out is not None else eval_batches()
                row["eval_loss"] = mean_loss(model, loss_fn, held_out)
            out.losses.append(row)
            if not finite:
                out.status = RunStatus.DIVERGED
                break
            out.last_finite_step = step
            if progress is not None:
                progress(step, schedule.steps)
            if step == schedule.steps:
                break
            optimizer.step()
    return out
