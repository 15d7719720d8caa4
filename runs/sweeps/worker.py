"""One run of a sweep: build the model under its preset, train and probe it, and write the run's shard.

This is the worker path: it imports torch, numpy (through torch), pyarrow, ssm and probes
only, so it runs on bare GPU nodes. The training itself is the one loop (runs.sweeps.loop), the
row the one builder (runs.sweeps.record). A run ends in one of three states, and its shard keeps
everything measured up to that point:
  completed — all steps done;
  diverged  — the loss or a probe turned NaN/Inf: stopped, `last_finite_step` recorded;
  failed    — an exception (the error text is stored); the sweep retries failed runs.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import torch

from ssmscope.probes import observer_for
from ssmscope.runs.store.schema import RunStatus
from ssmscope.runs.store.shards import write_shard
from ssmscope.runs.sweeps import corpus as data
from ssmscope.runs.sweeps.loop import ProgressFn, RunOutcome, Schedule, next_token_loss
from ssmscope.runs.sweeps.loop import train_and_probe as run_loop
from ssmscope.runs.sweeps.record import now_iso, provenance, run_record
from ssmscope.runs.sweeps.spec import RunConfig
from ssmscope.ssm import apply_preset, build_model, build_optimizer, load_preset
from ssmscope.ssm.scan import backend_that_runs


def train_run(cfg: RunConfig, device: torch.device, scan: str = "auto",
                    progress: ProgressFn | None = None) -> RunOutcome:
    """Build one config's model, optimizer and observer (seeded, under its preset and init base) and run the loop."""
    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model_config(scan=scan)
    model = build_model(model_cfg)  # the spec's family: MambaLM or Mamba2LM
    groups = apply_preset(model, model_cfg, load_preset(cfg.preset), cfg.optimizer, cfg.lr, seed=cfg.seed,
                          base=cfg.base)
    model.to(device)
    opt = build_optimizer(groups, cfg.optimizer, weight_decay=cfg.weight_decay)
    probe_batch = data.batch(cfg.task, "train", cfg.batch, cfg.seq_len, cfg.seed).to(device)

    def train_batch(step: int) -> torch.Tensor:
        return data.batch(cfg.task, "train", cfg.batch, cfg.seq_len, data.train_batch_seed(cfg.seed, step)).to(device)

    def eval_batches() -> list[torch.Tensor]:
        return [data.batch(cfg.task, "held_out", cfg.batch, cfg.seq_len, data.eval_batch_seed(cfg.seed, i)).to(device)
                for i in range(cfg.eval_batches)]

    observer = observer_for(model, grads=cfg.grads, state_prev=cfg.state_delta_prev, param_every=cfg.param_every,
                        readout=cfg.readout_probes)
    schedule = Schedule(steps=cfg.steps, log_every=cfg.log_every, eval_every=cfg.eval_every,
                        group_probes=cfg.group_probes)
    return run_loop(model, opt, observer, loss_fn=next_token_loss, probe_batch=probe_batch,
                    train_batch=None if cfg.fixed_batch else train_batch, schedule=schedule, lr=cfg.lr,
                    eval_batches=eval_batches, progress=progress)


def run_one(cfg: RunConfig, shard_root: Path, *, spec: str = "", device: str = "cpu", scan: str = "auto",
            progress: ProgressFn | None = None) -> str:
    """Run one config, write its shard atomically, return its status."""
    dev = torch.device(device)
    started = now_iso()
    t0 = time.perf_counter()
    error = ""
    try:
        out = train_run(cfg, dev, scan=scan, progress=progress)
    except Exception as exc:  # a failed run is recorded, not fatal to the sweep
        out = RunOutcome(RunStatus.FAILED)
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    device_name = str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev)
    run = run_record(cfg, spec=spec, status=out.status, last_finite_step=out.last_finite_step, error=error,
                     started_at=started, finished_at=now_iso(), wall_s=time.perf_counter() - t0,
                     device=device_name, scan=backend_that_runs(scan, dev), provenance=provenance())
    write_shard(shard_root, run, out.probes, out.losses)
    return RunStatus(out.status).value
