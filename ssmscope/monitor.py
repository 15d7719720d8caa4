"""Monitor: the Observer inside a user's own training loop, flushed to a shard the store ingests.

    with Monitor(model, "ssmscope-data/ssmscope.duckdb", probe_batch=ids[:8], every=100) as mon:
        for step, batch in enumerate(loader):
            mon.step(step)                      # every `every` steps: probe the fixed probe batch
            loss = loss_fn(model, batch); loss.backward(); opt.step(); opt.zero_grad()
            mon.log_loss(step, loss)            # optional: the training loss beside the probes

On a logged step, `step` runs one forward and backward of its own on the probe batch (gradients by
torch.autograd.grad: the parameters' .grad are never touched) before the user's update, so the
records at step s describe the model after s updates, as in a sweep; Δx, Δy are against the first
logged step on the same batch. Every `flush_every` logged steps (and on exit) the run's shard is
rewritten atomically with everything so far (runs.store.shards) and, with `ingest=True`, loaded into
the store, so the dashboard shows the run while it trains. A killed process loses at most the steps
since the last flush; its shard stays, marked "running". A shard that cannot be written (a full disk)
does not stop training: the next flush tries again, and only the last one, on exit, raises StoreError.
The run ends "completed", "diverged" (a non-finite loss or probe: probing stops there, the records
before it stay) or "failed" (an exception left the `with` block; its text is stored).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssmscope import records as rec
from ssmscope.probes import Observer
from ssmscope.probes.stats import is_finite_record
from ssmscope.recipe import Labels
from ssmscope.runs.store.db import StoreError, default_db_path, ingest, shard_dir_for
from ssmscope.runs.store.ownership import check_shard_root
from ssmscope.runs.store.schema import RunStatus
from ssmscope.runs.store.shards import write_shard
from ssmscope.runs.sweeps.ids import canonical_json, run_id_of
from ssmscope.runs.sweeps.loop import LossFn
from ssmscope.runs.sweeps.record import loss_rows, now_iso, provenance, run_row
from ssmscope.ssm.adapters.hf import DISCRETIZATION as HF_DISCRETIZATION
from ssmscope.ssm.adapters.hf import HFWidths, is_hf_mamba
from ssmscope.ssm.config import ScanBackend
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.model import MambaLM
from ssmscope.ssm.scan import backend_that_runs
from ssmscope.subjects import lm_loss

log = logging.getLogger(__name__)

RUNNING = RunStatus.RUNNING.value
"""Status of a monitored run's shard while it trains (or after its process was killed)."""


def _observer(model: nn.Module, grads: bool, params: bool, scan: str) -> Observer:
    if isinstance(model, MambaLM):
        return Observer(model, grads=grads, params=params)
    if is_hf_mamba(model):
        from ssmscope.probes.hf import HFObserver

        return HFObserver(model, grads=grads, params=params, scan=scan)
    raise ConfigError(f"Monitor observes ssmscope's MambaLM and transformers' MambaForCausalLM / MambaModel, not "
                      f"{type(model).__module__}.{type(model).__name__}")


def _widths(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, MambaLM):
        cfg = model.cfg
        return {"n_u": cfg.d_inner, "n_x": cfg.d_state, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
                "discretization": str(cfg.discretization), "dt_min": cfg.dt_min, "dt_max": cfg.dt_max}
    w, cfg = HFWidths.of(model), model.config
    return {"n_u": w.n_u, "n_x": w.n_x, "d_model": w.d_model, "n_layers": w.n_layers,
            "discretization": str(HF_DISCRETIZATION), "dt_min": float(cfg.time_step_min),
            "dt_max": float(cfg.time_step_max)}


class Monitor:
    """Probe a model every `every` steps of the user's loop and keep its shard current (module docstring).

    Args:
        model: ssmscope MambaLM or transformers MambaForCausalLM / MambaModel.
        db: the store to ingest into (default ./ssmscope-data/ssmscope.duckdb); shards go to `shards`,
            default the store's own `<db>.shards` (a folder of files ssmscope did not write is refused).
        probe_batch: the fixed batch every logged step probes (token ids (B, L+1) for the default loss).
        every: probe every this many steps (step 0 included). flush_every: write the shard every this many
            logged steps (and on exit). ingest: load the shard into `db` at each flush.
        loss: (model, batch) → scalar for the probe pass; default next-token cross entropy.
        labels: the run's keys (ssmscope.recipe.Labels: name — the run's `spec`, the dashboard's sweep selector —,
            preset, optimizer, lr, seed, task); Monitor applies no preset: the model trains as the user set it.
        grads: record ∂L/∂y and ∂L/∂x. params: record ‖W‖ and ‖W − W_0‖ per parameter (keeps a copy of
            the weights at the first logged step: turn off for a model that barely fits its device).
        scan: ssmscope's scan for transformers models' recomputation.
    """

    def __init__(self, model: nn.Module, db: str | Path | None = None, *, probe_batch: Any, every: int = 100,
                 flush_every: int = 1, ingest: bool = True, shards: str | Path | None = None,
                 loss: LossFn | None = None, labels: Labels | None = None, grads: bool = True,
                 params: bool = True, scan: str = "auto", run_id: str | None = None):
        labels = Labels() if labels is None else labels
        if not isinstance(labels, Labels):
            raise ConfigError(f"labels={type(labels).__name__}; allowed: ssmscope.recipe.Labels(...)")
        for key, value in (("every", every), ("flush_every", flush_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{key}={value!r}; allowed: a positive integer")
        if scan not in {b.value for b in ScanBackend}:
            raise ConfigError(f"scan={scan!r}; allowed: {', '.join(b.value for b in ScanBackend)}")
        self.model = model
        self.observer = _observer(model, grads, params, scan)
        self.db = Path(db) if db is not None else default_db_path()
        self.shards = Path(shards) if shards is not None else shard_dir_for(self.db)
        check_shard_root(self.shards)  # a folder of the user's own files is refused before training starts
        self.probe_batch = probe_batch
        self.every, self.flush_every, self.ingest = every, flush_every, ingest
        self.loss_fn = loss if loss is not None else lm_loss
        self.started = now_iso()
        self._t0 = time.perf_counter()
        keys = {"spec": labels.name, "preset": labels.preset, "optimizer": labels.optimizer, "lr": labels.lr,
                "seed": labels.seed, "task": labels.task, **_widths(model)}
        self.run_id = run_id or run_id_of({"monitor": labels.name, "started": self.started, **provenance(), **keys})
        self._keys = keys
        self.records: list[dict[str, Any]] = []
        self.losses: dict[int, dict[str, Any]] = {}
        self.status: str = RUNNING
        self.last_finite_step = -1
        self.last_step: int | None = None
        self.error = ""
        self._unflushed = 0
        self._ingest_warned = False
        self._write_warned = False
        self._attached = False

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self) -> Monitor:
        return self.attach()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.detach()
            return
        if self.status == RUNNING:
            self.status = RunStatus.FAILED.value
            self.error = f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc, limit=8))}"
        try:
            self.detach()
        except StoreError as store_exc:  # the user's exception is the one to see; this one is logged
            log.error("ssmscope Monitor: %s", store_exc)

    def attach(self) -> Monitor:
        """Hook the model (the same as entering the `with` block)."""
        if not self._attached:
            self.observer.__enter__()
            self._attached = True
        return self

    def detach(self) -> None:
        """Unhook the model, mark the run completed (unless it diverged or failed) and flush."""
        if self._attached:
            self.observer.__exit__(None, None, None)
            self._attached = False
        if self.status == RUNNING:
            self.status = RunStatus.COMPLETED.value
        self.flush()

    # ------------------------------------------------------------------ the loop
    def due(self, step: int) -> bool:
        """Whether `step` is a logged step."""
        return step % self.every == 0

    def step(self, step: int) -> list[dict[str, Any]]:
        """Call once per training step, before the update: probes on logged steps; returns their records."""
        if not self._attached:
            raise RuntimeError("Monitor.step() outside the with block (or before attach())")
        if self.status != RUNNING or not self.due(step):
            return []
        self.observer.arm(step)
        with torch.set_grad_enabled(self.observer.grads):
            loss = self.loss_fn(self.model, self.probe_batch)
        if self.observer.grads:
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.autograd.grad(loss, params, allow_unused=True)  # fires the probes' hooks; .grad untouched
        records = [{**r, "run_id": self.run_id} for r in self.observer.collect()]
        self.records.extend(records)
        self.last_step = step
        if math.isfinite(loss.item()) and all(is_finite_record(r) for r in records):
            self.last_finite_step = step
        else:
            self.status = RunStatus.DIVERGED.value
        self._unflushed += 1
        if self._unflushed >= self.flush_every or self.status != RUNNING:
            self.flush()
        return records

    def log_loss(self, step: int, loss: float | Tensor, *, lr: float | None = None) -> None:
        """Record the training loss of `step` (stored in the run's losses; a non-finite one marks divergence)."""
        value = float(loss.detach().item() if isinstance(loss, Tensor) else loss)
        self.losses[step] = {"step": step, "train_loss": value, "eval_loss": None, "lr": lr}
        if not math.isfinite(value) and self.status == RUNNING:
            self.status = RunStatus.DIVERGED.value

    # ------------------------------------------------------------------ storage
    def run_row(self) -> dict[str, Any]:
        """The run's row as of now."""
        k = self._keys
        return run_row(
            run_id=self.run_id, spec=k["spec"], status=self.status, last_finite_step=self.last_finite_step,
            error=self.error, preset=k["preset"], discretization=k["discretization"], optimizer=k["optimizer"],
            lr=k["lr"], seed=k["seed"], n_u=k["n_u"], n_x=k["n_x"], d_model=k["d_model"], n_layers=k["n_layers"],
            steps=self.last_step if self.last_step is not None else 0, task=k["task"], dt_min=k["dt_min"],
            dt_max=k["dt_max"], config_json=canonical_json({"monitor": k, "every": self.every, "base": rec.USER_BASE}),
            started_at=self.started, finished_at=now_iso(), wall_s=time.perf_counter() - self._t0,
            device=_device(self.model), scan=self._scan(), **provenance())

    def _scan(self) -> str:
        """The scan backend that computes the model's states (AUTO resolved on the model's device): ssmscope's
        MambaLM scans with its config's backend; for transformers' Mamba it is ssmscope's recomputation."""
        name = self.model.cfg.scan if isinstance(self.model, MambaLM) else getattr(self.observer, "scan", "")
        if not name:
            return ""
        p = next(self.model.parameters(), None)
        return backend_that_runs(name, p.device if p is not None else torch.device("cpu"))

    def flush(self) -> Path | None:
        """Rewrite the run's shard with everything so far (atomically) and, with ingest on, load it.

        A shard that cannot be written (a full disk, say) does not stop training: the records stay in
        memory and the next flush tries again (one warning). The final flush, on detach, raises StoreError.
        """
        try:
            path = write_shard(self.shards, self.run_row(), self.records,
                               loss_rows([self.losses[s] for s in sorted(self.losses)]))
        except OSError as exc:
            problem = f"cannot write the shard of run {self.run_id} under {self.shards}: {exc.strerror or exc}"
            if self._attached:
                if not self._write_warned:
                    log.warning("ssmscope Monitor: %s; the records stay in memory and the next flush tries again",
                                problem)
                    self._write_warned = True
                return None
            raise StoreError(f"{problem}; free space or pass shards= elsewhere (the records are in "
                             "Monitor.records; call flush() again)") from None
        self._unflushed = 0
        if self.ingest:
            try:
                ingest(self.db, self.shards)
            except StoreError as exc:  # e.g. another writer holds the store: the shard waits for the next flush
                if not self._ingest_warned:
                    log.warning("ssmscope Monitor: %s; the shard is kept in %s and ingested at the next flush "
                                "(or by `ssmscope ingest`)", exc, self.shards)
                    self._ingest_warned = True
        return path


def _device(model: nn.Module) -> str:
    p: Tensor | None = next(model.parameters(), None)
    if p is None:
        return ""
    return torch.cuda.get_device_name(p.device) if p.device.type == "cuda" else str(p.device)
