"""coord_check: the coordinate check of any Mamba in one call, in memory, as a probe frame.

For every width × preset × discretisation × optimizer × learning rate × seed it builds the model
(runs.library.subjects), trains it for `steps` steps on the given batches, and records the Observer's
probe records at the logged steps, exactly as a sweep's worker does (runs.sweeps.worker: the same
order of probe pass, training pass and update, the same divergence rule). The result is the probe
frame the store would return for those runs (runs.library.records), so `ssmscope.fit_slopes`,
`ssmscope.coord_figure` and `ssmscope.store.save` take it directly.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from torch import Tensor

from ssmscope.probes.stats import is_finite_record
from ssmscope.runs.library import records as rec
from ssmscope.runs.library.subjects import Family, LossFn, Setting, Subject, lm_loss, preset_of, resolve_family
from ssmscope.runs.store.schema import RunStatus
from ssmscope.ssm.config import Discretization, ScanBackend
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import Optimizer

Width = int | tuple[int, int]
"""A width: N (joint, N_u = N_x = N) or (N_u, N_x)."""
Batches = Tensor | Sequence[Any]


def _widths(widths: Sequence[Width]) -> list[tuple[int, int]]:
    if isinstance(widths, int | tuple) or not widths:
        raise ConfigError(f"widths={widths!r}; allowed: a non-empty list of N or (N_u, N_x), e.g. [32, 64, 128]")
    out = []
    for w in widths:
        pair = (w, w) if isinstance(w, int) and not isinstance(w, bool) else w
        if not (isinstance(pair, tuple) and len(pair) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
            raise ConfigError(f"widths: {w!r}; allowed: a positive int N (N_u = N_x = N) or a pair (N_u, N_x)")
        out.append(pair)
    if len(set(out)) != len(out):
        raise ConfigError(f"widths={widths!r} repeats a width")
    return out


def _names(key: str, value: str | Sequence[str] | None) -> list[Any]:
    if value is None:
        return [None]
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise ConfigError(f"{key}=[]; give at least one")
    return values


def _positive(key: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ConfigError(f"{key}={value!r}; allowed: a positive {kind.__name__}")


def _fingerprint(batches: Batches, probe_batch: Any) -> str:
    """SHA-256 (16 hex) of the batches' bytes: two checks on other data never share run ids."""
    h = hashlib.sha256()
    items = [batches] if isinstance(batches, Tensor) else list(batches)
    for b in [*items, probe_batch]:
        if isinstance(b, Tensor):
            h.update(str((tuple(b.shape), str(b.dtype))).encode())
            h.update(b.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(b).encode())
    return h.hexdigest()[:16]


def _shape(batch: Any) -> tuple[int, int]:
    """(batch size, sequence length) of a token-id batch (B, L+1); (0, 0) for other batch objects."""
    if isinstance(batch, Tensor) and batch.dim() == 2:
        return int(batch.shape[0]), int(batch.shape[1]) - 1
    return 0, 0


def train_and_probe(subject: Subject, loss_fn: LossFn, batches: Batches, probe_batch: Any, *, steps: int,
                    log_every: int, base_lr: float, device: torch.device) -> dict[str, Any]:
    """One run, in the worker's order (runs.sweeps.worker.train_and_probe): {status, last_finite_step,
    probes, losses}. A fixed batch (a tensor) is trained on and probed in one pass; with a sequence,
    step t trains on batches[t % len] and logged steps probe `probe_batch` in a pass of their own."""
    fixed = isinstance(batches, Tensor)
    pool = [batches] if fixed else list(batches)
    model, opt = subject.model, subject.optimizer

    def to_device(b: Any) -> Any:
        return b.to(device) if isinstance(b, Tensor) else b

    probe_batch = to_device(probe_batch)
    probes: list[dict[str, Any]] = []
    losses: list[dict[str, Any]] = []
    status, last_finite = RunStatus.COMPLETED, -1
    with subject.observer as obs:
        for step in range(steps + 1):
            logged = step % log_every == 0 or step == steps
            batch = probe_batch if fixed else to_device(pool[step % len(pool)])
            records: list[dict[str, Any]] = []
            if logged and not fixed:
                obs.arm(step)
                loss_fn(model, probe_batch).backward()
                records = obs.collect()
            elif logged:
                obs.arm(step)
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if logged and fixed:
                records = obs.collect()
            value = loss.item()
            finite = math.isfinite(value) and all(is_finite_record(r) for r in records)
            probes.extend(records)
            losses.append({"step": step, "train_loss": value, "eval_loss": None, "lr": base_lr})
            if not finite:
                status = RunStatus.DIVERGED
                break
            last_finite = step
            if step == steps:
                break
            opt.step()
    return {"status": status, "last_finite_step": last_finite, "probes": probes, "losses": losses}


@dataclass(frozen=True)
class _Context:
    """What every run of one coord_check shares; `run` trains one and records it."""

    family: Family
    loss_fn: LossFn
    batches: Batches
    probe_batch: Any
    device: torch.device
    dtype: torch.dtype | None
    name: str
    task: str
    common: dict[str, Any]  # the settings every run's description holds

    def run(self, setting: Setting, n_u: int, n_x: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Train and probe one width; returns the run's row and its records (each with its run_id)."""
        started, t0 = rec.now_iso(), time.perf_counter()
        subject = self.family.build(n_u, n_x, setting, self.device, self.dtype)
        out = train_and_probe(subject, self.loss_fn, self.batches, self.probe_batch,
                              steps=self.common["steps"], log_every=self.common["log_every"], base_lr=setting.lr,
                              device=self.device)
        preset = setting.preset
        description = {"family": self.family.describe(), "preset": preset.name, "preset_source": preset.source,
                       "discretization": str(setting.discretization), "optimizer": setting.optimizer,
                       "lr": setting.lr, "seed": setting.seed, "n_u": n_u, "n_x": n_x,
                       "base": self.family.init_base(preset), **self.common}
        run_id = rec.run_id_of(description)
        batch_size, seq_len = _shape(self.probe_batch)
        row = rec.run_row(
            run_id=run_id, spec=self.name, status=out["status"].value, last_finite_step=out["last_finite_step"],
            preset=preset.name, discretization=str(setting.discretization), optimizer=setting.optimizer,
            lr=setting.lr, seed=setting.seed, n_u=n_u, n_x=n_x, d_model=subject.d_model,
            n_layers=subject.n_layers, steps=self.common["steps"], batch=batch_size, seq_len=seq_len,
            task=self.task, fixed_batch=isinstance(self.batches, Tensor), dt_min=subject.dt_min,
            dt_max=subject.dt_max, config_json=rec.json_of(description), started_at=started,
            finished_at=rec.now_iso(), wall_s=time.perf_counter() - t0, device=str(self.device),
            scan=setting.scan, **rec.provenance())
        rec.RUNS[run_id] = rec.RunData(row, rec.loss_rows(out["losses"]))
        return row, [{**r, "run_id": run_id} for r in out["probes"]]


def coord_check(make_model: Any, widths: Sequence[Width], batches: Batches, *,
                presets: str | Sequence[str] = ("sp", "mup-ssm"), optimizer: str = "adam",
                lr: float | Sequence[float] = 1e-2, steps: int = 10, seeds: Sequence[int] = (0,),
                log_every: int = 1, discretizations: str | Sequence[str] | None = None,
                probe_batch: Any = None, loss: LossFn | None = None, weight_decay: float = 0.0,
                grads: bool = True, state_prev: bool = False, conventions: Sequence[str] = (),
                scan: str = "auto", device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                name: str = "coord_check", task: str = "custom",
                progress: bool | Callable[[dict[str, Any]], None] = False) -> pl.DataFrame:
    """Train every width of a Mamba under each preset and return the probe records as one long frame.

    Args:
        make_model: the model family: an ssmscope MambaConfig (the template, widths set per run), a
            transformers MambaConfig or `ssmscope.HFMamba(...)` (transformers' Mamba, under the adapter),
            or a callable (N_u, N_x) → MambaLM or transformers Mamba.
        widths: N (joint: N_u = N_x = N) or (N_u, N_x) pairs; slopes need at least 3 per axis.
        batches: token ids (B, L+1) — the fixed batch (trained on and probed, µP's coordinate check) — or a
            sequence of batches (step t trains on batches[t % len]; logged steps probe `probe_batch`,
            default batches[0], in a pass of their own).
        presets: preset names or TOML paths. optimizer: sgd | adam | adamw. lr: base learning rate(s).
        steps: optimizer steps (probes at step s see the model after s updates). seeds: one run each.
        log_every: probe every this many steps (and at the last). discretizations: zoh | euler (ssmscope
            models; transformers' scan is Euler); None: the model's own.
        loss: (model, batch) → scalar; default next-token cross entropy on token ids.
        weight_decay, grads (∂L/∂y and ∂L/∂x), state_prev (Δx against the previous logged step).
        conventions: also add a column norm_<convention> (rms, l2, token_l2, channel_l2) per convention.
        scan: ssmscope's scan backend (auto | reference | fast | triton). device, dtype: where and in what
            precision the models train (dtype None: as built, float32).
        name, task: stored as the runs' spec and task (the dashboard's sweep selector shows `name`).
        progress: True prints a line per finished run; a callable receives each run's row.

    Returns: the probe frame (runs.store.schema.PROBE_FRAME_COLUMNS plus spec, task, dt_max), one row per
    (run, step, layer, site, quantity, group). Diverged runs keep their records up to the divergence and
    have status "diverged" (the fits and figures leave them out and mark them).
    """
    pairs = _widths(widths)
    for key, value in (("steps", steps), ("log_every", log_every)):
        _positive(key, value)
    lrs = [lr] if isinstance(lr, int | float) else list(lr)
    for v in lrs:
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ConfigError(f"lr={v!r}; allowed: a positive number")
    seed_list = list(seeds)
    if not seed_list or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed_list):
        raise ConfigError(f"seeds={seeds!r}; allowed: a non-empty list of ints")
    try:
        optimizer = Optimizer(optimizer).value
    except ValueError:
        raise ConfigError(f"optimizer={optimizer!r}; allowed: {', '.join(o.value for o in Optimizer)}") from None
    try:
        scan = ScanBackend(scan).value
    except ValueError:
        raise ConfigError(f"scan={scan!r}; allowed: {', '.join(b.value for b in ScanBackend)}") from None
    preset_objs = [preset_of(p) for p in _names("presets", presets)]
    if isinstance(batches, Tensor):
        if probe_batch is not None:
            raise ConfigError("probe_batch is for a sequence of batches; a single batch is itself the probe batch")
        probe_batch = batches
    else:
        if isinstance(batches, str | bytes) or not isinstance(batches, Sequence) or not batches:
            raise ConfigError("batches: a tensor of token ids (batch, length + 1) or a non-empty list of batches")
        probe_batch = batches[0] if probe_batch is None else probe_batch
    loss_fn = loss if loss is not None else lm_loss
    norm_exprs = _convention_columns(conventions)
    family = resolve_family(make_model, pairs[0])
    discs = [family.discretizations(None if d is None else _disc(d)) for d in _names("discretizations",
                                                                                        discretizations)]

    common = {"steps": steps, "log_every": log_every, "weight_decay": weight_decay, "grads": grads,
              "state_prev": state_prev, "data": _fingerprint(batches, probe_batch), "loss": _loss_name(loss),
              "dtype": str(dtype) if dtype is not None else "default"}
    context = _Context(family, loss_fn, batches, probe_batch, torch.device(device), dtype, name, task, common)
    all_records: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    for preset, disc, base_lr, seed, (n_u, n_x) in itertools.product(preset_objs, discs, lrs, seed_list, pairs):
        setting = Setting(preset, disc, optimizer, float(base_lr), seed, weight_decay, grads, state_prev, scan)
        row, records = context.run(setting, n_u, n_x)
        runs[row["run_id"]] = row
        all_records.extend(records)
        _report(progress, row)
    frame = rec.probe_frame(all_records, runs)
    return frame.with_columns(norm_exprs) if norm_exprs else frame


def _disc(value: str) -> Discretization:
    try:
        return Discretization(value)
    except ValueError:
        raise ConfigError(f"discretization={value!r}; allowed: {', '.join(d.value for d in Discretization)}") from None


def _convention_columns(conventions: Sequence[str]) -> list[Any]:
    if isinstance(conventions, str):
        conventions = [conventions]
    if not conventions:
        return []
    from ssmscope.runs.analysis.norms import norm_expr

    return [norm_expr(c).alias(f"norm_{c}") for c in conventions]


def _loss_name(loss: LossFn | None) -> str:
    return "next-token cross entropy" if loss is None else f"{getattr(loss, '__module__', '?')}." \
        f"{getattr(loss, '__qualname__', type(loss).__name__)}"


def _report(progress: bool | Callable[[dict[str, Any]], None], row: dict[str, Any]) -> None:
    if callable(progress):
        progress(row)
    elif progress:
        print(f"{row['preset']:>8} {row['discretization']:<5} {row['optimizer']} lr {row['lr']:g} seed {row['seed']} "
              f"N_u={row['n_u']:<5} N_x={row['n_x']:<4} {row['status']:<9} {row['wall_s']:.1f} s", flush=True)
