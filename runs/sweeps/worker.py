"""One run: build the model under its preset, train, probe, and write the run's shard.

This is the worker path: it imports torch, numpy (through torch), pyarrow, ssm and probes
only, so it runs on bare GPU nodes. A run ends in one of three states, and its shard keeps
everything measured up to that point:
  completed — all steps done;
  diverged  — the loss or a probe turned NaN/Inf: stopped, `last_finite_step` recorded;
  failed    — an exception (the error text is stored); the sweep retries failed runs.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ssmscope.probes import Observer
from ssmscope.probes.stats import is_finite_record
from ssmscope.runs.store.schema import RunStatus
from ssmscope.runs.store.shards import write_shard
from ssmscope.runs.sweeps import corpus as data
from ssmscope.runs.sweeps.record import now_iso, run_record
from ssmscope.runs.sweeps.spec import RunConfig
from ssmscope.ssm import MambaLM, apply_preset, build_optimizer, load_preset
from ssmscope.ssm.scan import backend_that_runs

ProgressFn = Callable[[int, int], None]  # (steps done, total steps)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ssmscope")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def _loss(model: MambaLM, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])  # (B, L, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _eval_loss(model: MambaLM, cfg: RunConfig, device: torch.device) -> float:
    with torch.no_grad():
        batches = [data.batch(cfg.task, "held_out", cfg.batch, cfg.seq_len, data.eval_batch_seed(cfg.seed, i))
                   for i in range(cfg.eval_batches)]
        losses = [_loss(model, ids.to(device)).item() for ids in batches]
    return sum(losses) / len(losses)


def train_and_probe(cfg: RunConfig, device: torch.device, scan: str = "auto",
                    progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train one config and return {status, last_finite_step, probes, losses}."""
    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model_config(scan=scan)
    model = MambaLM(model_cfg)
    groups = apply_preset(model, model_cfg, load_preset(cfg.preset), cfg.optimizer, cfg.lr, seed=cfg.seed,
                          base=cfg.base)
    model.to(device)
    opt = build_optimizer(groups, cfg.optimizer, weight_decay=cfg.weight_decay)
    probe_batch = data.batch(cfg.task, "train", cfg.batch, cfg.seq_len, cfg.seed).to(device)
    probes: list[dict[str, Any]] = []
    losses: list[dict[str, Any]] = []
    status, last_finite = RunStatus.COMPLETED, -1
    with Observer(model, grads=cfg.grads, state_prev=cfg.state_delta_prev, param_every=cfg.param_every) as obs:
        for step in range(cfg.steps + 1):
            logged = step % cfg.log_every == 0 or step == cfg.steps
            ids = probe_batch if cfg.fixed_batch else data.batch(
                cfg.task, "train", cfg.batch, cfg.seq_len, data.train_batch_seed(cfg.seed, step)).to(device)
            records: list[dict[str, Any]] = []
            if logged and not cfg.fixed_batch:  # probe the fixed batch in its own pass
                obs.arm(step)
                _loss(model, probe_batch).backward()
                records = obs.collect()
            elif logged:  # the training pass on the fixed batch is the probe pass
                obs.arm(step)
            loss = _loss(model, ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if logged and cfg.fixed_batch:
                records = obs.collect()
            if logged and cfg.group_probes and step > 0:
                records += obs.group_update_records(step, probe_batch[:, :-1])
            finite = math.isfinite(loss.item()) and all(is_finite_record(r) for r in records)
            probes.extend(records)
            row = {"step": step, "train_loss": loss.item(), "eval_loss": None, "lr": cfg.lr}
            if cfg.eval_every and step % cfg.eval_every == 0 and finite:
                row["eval_loss"] = _eval_loss(model, cfg, device)
            losses.append(row)
            if not finite:
                status = RunStatus.DIVERGED
                break
            last_finite = step
            if progress is not None:
                progress(step, cfg.steps)
            if step == cfg.steps:
                break
            opt.step()
    return {"status": status, "last_finite_step": last_finite, "probes": probes, "losses": losses}


def run_one(cfg: RunConfig, shard_root: Path, *, spec: str = "", device: str = "cpu", scan: str = "auto",
            progress: ProgressFn | None = None) -> str:
    """Run one config, write its shard atomically, return its status."""
    dev = torch.device(device)
    started = now_iso()
    t0 = time.perf_counter()
    error = ""
    try:
        out = train_and_probe(cfg, dev, scan=scan, progress=progress)
    except Exception as exc:  # a failed run is recorded, not fatal to the sweep
        out = {"status": RunStatus.FAILED, "last_finite_step": -1, "probes": [], "losses": []}
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    device_name = str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev)
    provenance = {"torch_version": torch.__version__, "ssmscope_version": _version(),
                  "git_commit": _git_commit(), "hostname": platform.node()}
    run = run_record(cfg, spec=spec, status=out["status"], last_finite_step=out["last_finite_step"], error=error,
                     started_at=started, finished_at=now_iso(), wall_s=time.perf_counter() - t0,
                     device=device_name, scan=backend_that_runs(scan, dev), provenance=provenance)
    write_shard(shard_root, run, out["probes"], out["losses"])
    return RunStatus(out["status"]).value
