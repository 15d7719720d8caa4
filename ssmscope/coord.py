"""coord_check: the coordinate check of any Mamba in one call, in memory, as a probe frame.

For every width × preset × discretisation × optimizer × learning rate × seed it builds the model
(ssmscope.subjects), trains it for `steps` steps on the given batches, and records the Observer's
probe records at the logged steps, exactly as a sweep's worker does (runs.sweeps.worker: the same
order of probe pass, training pass and update, the same divergence rule). The result is the probe
frame the store would return for those runs (ssmscope.records), so `ssmscope.fit_slopes`,
`ssmscope.coord_figure` and `ssmscope.store.save` take it directly.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import polars as pl
import torch
from torch import Tensor

from ssmscope import records as rec
from ssmscope.probes.family import ModelFamily
from ssmscope.recipe import Grid, Training, shown
from ssmscope.records import RunData, Runs
from ssmscope.runs.store.schema import DEFAULT_MODEL
from ssmscope.runs.sweeps.ids import canonical_json, run_id_of
from ssmscope.runs.sweeps.loop import LossFn, train_and_probe
from ssmscope.runs.sweeps.memory import human, mamba_run_bytes, parse_size
from ssmscope.runs.sweeps.preflight import AUTO as AUTO_MEMORY
from ssmscope.runs.sweeps.preflight import memory_limit
from ssmscope.runs.sweeps.record import loss_rows, now_iso, provenance, run_row
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.scan import backend_that_runs
from ssmscope.subjects import Setting, lm_loss, preset_of, resolve_family

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


def _check_batch(what: str, batch: Any, vocab: int | None, token_ids: bool) -> None:
    """One batch, before any training: not empty; for the default loss, int token ids (B, L+1) inside the vocabulary.

    Without this an empty batch fails deep in the probes (`max()` of nothing) and an id ≥ vocab_size as an
    "index out of range" from the embedding (or a device-side assert on a GPU)."""
    if not isinstance(batch, Tensor):
        if token_ids:
            raise ConfigError(f"{what}: a {type(batch).__name__}; the default loss takes token ids, a tensor "
                              "(batch, length + 1); for other batches pass loss=")
        return
    if batch.numel() == 0 or (batch.dim() >= 1 and batch.shape[0] == 0):
        raise ConfigError(f"{what} is empty (shape {tuple(batch.shape)}); give at least one sequence")
    if not token_ids:
        return
    if batch.dim() != 2 or batch.shape[1] < 2:
        raise ConfigError(f"{what} has shape {tuple(batch.shape)}; token ids need shape (batch, length + 1) with "
                          "length ≥ 1; for other batches pass loss=")
    if batch.dtype.is_floating_point or batch.dtype.is_complex or batch.dtype == torch.bool:
        raise ConfigError(f"{what} has dtype {batch.dtype}; token ids are integers (torch.long)")
    low, high = int(batch.min()), int(batch.max())
    if low < 0:
        raise ConfigError(f"{what} holds token id {low}; ids are in [0, vocab_size)")
    if vocab is not None and high >= vocab:
        raise ConfigError(f"{what} holds token id {high}, but the model's vocab_size is {vocab} (ids 0 … {vocab - 1}); "
                          "map the ids into the vocabulary or build the model with a larger vocab_size")


def _check_memory(family: ModelFamily, pairs: list[tuple[int, int]], batches: list[Any], device: torch.device,
                  max_memory: int | str | None) -> None:
    """The largest width's estimated peak (runs.sweeps.memory, as `ssmscope sweep` checks before training) must fit
    `max_memory`: bytes, a size ('16G'), 'auto' (this machine's free RAM, or the GPU's memory) or None (no check)."""
    if max_memory is None:
        return
    if max_memory == AUTO_MEMORY:
        found = memory_limit(str(device), "local", 1)
        if found is None:
            return
        limit, source = found
    else:
        try:
            parsed = parse_size(max_memory) if isinstance(max_memory, str) else max_memory
        except ValueError:
            parsed = 0
        if parsed is None:  # 'none' / 'off', as --max-memory takes them
            return
        if isinstance(parsed, bool) or not isinstance(parsed, int) or parsed <= 0:
            raise ConfigError(f"max_memory={shown(max_memory)}; allowed: 'auto', None, a number of bytes or a "
                              "size such as '16G'") from None
        limit, source = parsed, "max_memory"
    shapes = [_shape(b) for b in batches]
    batch = max((b for b, _ in shapes), default=1) or 1
    seq_len = max((n for _, n in shapes), default=1) or 1
    worst, need = None, 0
    for n_u, n_x in pairs:
        shape = family.shape_at(n_u, n_x)
        if shape is None:
            return  # a family whose sizes are unknown before building: nothing to estimate from
        est = mamba_run_bytes(d_model=shape.d_model, n_u=n_u, n_x=n_x, n_layers=shape.n_layers, batch=batch,
                              seq_len=seq_len, vocab=shape.vocab_size)
        if est > need:
            worst, need = (n_u, n_x, shape.n_layers), est
    if worst is not None and need > limit:
        n_u, n_x, layers = worst
        raise ConfigError(f"widths: N_u={n_u}, N_x={n_x} (batch {batch}, length {seq_len}, {layers} "
                          f"layer{'s' if layers != 1 else ''}) needs "
                          f"about {human(need)}, more than the {human(limit)} available ({source}); use smaller "
                          "widths or batches, or override with max_memory=SIZE (or None)")


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


@dataclass(frozen=True)
class _Context:
    """What every run of one coord_check shares; `run` trains one and records it."""

    family: ModelFamily
    loss_fn: LossFn
    batches: Batches
    probe_batch: Any
    eval_batches: Sequence[Any] | None
    training: Training
    device: torch.device
    name: str
    task: str
    common: dict[str, Any]  # the settings every run's description holds (and its id hashes)

    def run(self, setting: Setting, n_u: int, n_x: int) -> tuple[RunData, list[dict[str, Any]]]:
        """Train and probe one width through the one loop (runs.sweeps.loop); returns the run's row and losses, and
        its records (each with its run_id)."""
        started, t0 = now_iso(), time.perf_counter()
        subject = self.family.build(n_u, n_x, setting, self.device, self.training.dtype)
        pool = [self.batches] if isinstance(self.batches, Tensor) else list(self.batches)

        def to_device(b: Any) -> Any:
            return b.to(self.device) if isinstance(b, Tensor) else b

        eval_pool = self.eval_batches
        out = train_and_probe(
            subject.model, subject.optimizer, subject.observer, loss_fn=self.loss_fn,
            probe_batch=to_device(self.probe_batch),
            train_batch=None if isinstance(self.batches, Tensor) else lambda step: to_device(pool[step % len(pool)]),
            schedule=self.training.schedule, lr=setting.lr,
            eval_batches=None if eval_pool is None else lambda: [to_device(b) for b in eval_pool])
        preset = setting.preset
        description = {"family": self.family.describe(), "preset": preset.name, "preset_source": preset.source,
                       "discretization": str(setting.discretization), "optimizer": setting.optimizer,
                       "lr": setting.lr, "seed": setting.seed, "n_u": n_u, "n_x": n_x,
                       "base": self.family.init_base(preset), **self.common}
        model_key = getattr(self.family, "model_key", DEFAULT_MODEL)
        if model_key != DEFAULT_MODEL:  # the store's `model` key; S6 runs keep their ids (runs.store.schema)
            description["model"] = model_key
        run_id = run_id_of(description)
        batch_size, seq_len = _shape(self.probe_batch)
        row = run_row(
            run_id=run_id, spec=self.name, status=out.status, last_finite_step=out.last_finite_step,
            preset=preset.name, discretization=str(setting.discretization), optimizer=setting.optimizer,
            lr=setting.lr, seed=setting.seed, n_u=n_u, n_x=n_x, d_model=subject.d_model,
            n_layers=subject.n_layers, steps=self.training.steps, batch=batch_size, seq_len=seq_len,
            task=self.task, fixed_batch=isinstance(self.batches, Tensor), dt_min=subject.dt_min,
            dt_max=subject.dt_max, config_json=canonical_json(description), started_at=started,
            finished_at=now_iso(), wall_s=time.perf_counter() - t0, device=str(self.device),
            scan=backend_that_runs(setting.scan, self.device), **provenance())
        return RunData(row, loss_rows(out.losses)), [{**r, "run_id": run_id} for r in out.probes]


@overload
def coord_check(make_model: Any, widths: Sequence[Width], batches: Batches, grid: Grid | None = None,
                training: Training | None = None, *, probe_batch: Any = None,
                eval_batches: Sequence[Any] | None = None, loss: LossFn | None = None,
                conventions: Sequence[str] = (), device: str | torch.device = "cpu", name: str = "coord_check",
                task: str = "custom", progress: bool | Callable[[dict[str, Any]], None] = False,
                max_memory: int | str | None = AUTO_MEMORY, return_runs: Literal[False] = False) -> pl.DataFrame: ...


@overload
def coord_check(make_model: Any, widths: Sequence[Width], batches: Batches, grid: Grid | None = None,
                training: Training | None = None, *, probe_batch: Any = None,
                eval_batches: Sequence[Any] | None = None, loss: LossFn | None = None,
                conventions: Sequence[str] = (), device: str | torch.device = "cpu", name: str = "coord_check",
                task: str = "custom", progress: bool | Callable[[dict[str, Any]], None] = False,
                max_memory: int | str | None = AUTO_MEMORY,
                return_runs: Literal[True]) -> tuple[pl.DataFrame, Runs]: ...


def coord_check(make_model: Any, widths: Sequence[Width], batches: Batches, grid: Grid | None = None,
                training: Training | None = None, *, probe_batch: Any = None,
                eval_batches: Sequence[Any] | None = None, loss: LossFn | None = None,
                conventions: Sequence[str] = (), device: str | torch.device = "cpu", name: str = "coord_check",
                task: str = "custom", progress: bool | Callable[[dict[str, Any]], None] = False,
                max_memory: int | str | None = AUTO_MEMORY,
                return_runs: bool = False) -> pl.DataFrame | tuple[pl.DataFrame, Runs]:
    """Train every width of a Mamba under each setting of `grid` and return the probe records as one long frame.

    Args:
        make_model: the model family: an ssmscope MambaConfig or Mamba2Config (the template, widths set per run), a
            transformers MambaConfig or `ssmscope.HFMamba(...)` (transformers' Mamba, under the adapter),
            or a callable (N_u, N_x) → MambaLM or transformers Mamba.
        widths: N (joint: N_u = N_x = N) or (N_u, N_x) pairs; slopes need at least 3 per axis.
        batches: token ids (B, L+1) — the fixed batch (trained on and probed, µP's coordinate check) — or a
            sequence of batches (step t trains on batches[t % len]; logged steps probe `probe_batch`,
            default batches[0], in a pass of their own).
        grid: what varies between runs (ssmscope.recipe.Grid: presets, discretizations, optimizer, lrs, seeds);
            default Grid(): sp and mup-ssm, Adam, lr 1e-2, seed 0.
        training: what every run shares (ssmscope.recipe.Training: steps, log_every, weight_decay, grads,
            state_prev, scan, dtype, eval_every, group_probes); default Training(): 10 steps, every step logged.
        eval_batches: held-out batches whose mean loss is stored every training.eval_every steps.
        loss: (model, batch) → scalar; default next-token cross entropy on token ids.
        conventions: also add a column norm_<convention> (rms, l2, token_l2, channel_l2) per convention.
        device: where the models train.
        name, task: stored as the runs' spec and task (the dashboard's sweep selector shows `name`).
        progress: True prints a line per finished run; a callable receives each run's row.
        max_memory: the memory one run may use; the largest width's estimated peak (as `ssmscope sweep`
            estimates it, runs.sweeps.memory) must fit before anything trains. 'auto': this machine's free RAM
            (or the GPU's memory on CUDA); bytes or a size such as '16G'; None: no check.
        return_runs: also return the runs' full rows and losses (ssmscope.records.Runs), for
            `ssmscope.store.save(frame, db, runs=runs)`.

    Every argument is checked before the first model is built (the grid and training when they are made); a
    problem is one ConfigError naming the argument, what it got and what is allowed (a torch module instead of
    a model family, an empty batch, token ids outside the vocabulary, lrs inf or '0.01', a seed outside
    [0, 2**63 − 1], steps beyond ssmscope.recipe.MAX_STEPS, widths that would not fit in memory).

    Returns: the probe frame (runs.store.schema.PROBE_FRAME_COLUMNS plus spec, task, dt_max), one row per
    (run, step, layer, site, quantity, group) — with return_runs, (frame, runs). Diverged runs keep their
    records up to the divergence and have status "diverged" (the fits and figures leave them out and mark them).
    """
    grid = Grid() if grid is None else grid
    training = Training() if training is None else training
    for key, value, kind in (("grid", grid, Grid), ("training", training, Training)):
        if not isinstance(value, kind):
            raise ConfigError(f"{key}={type(value).__name__}; allowed: ssmscope.recipe.{kind.__name__}(...)")
    pairs = _widths(widths)
    preset_objs = [preset_of(p) for p in grid.presets]
    if isinstance(batches, Tensor):
        if probe_batch is not None:
            raise ConfigError("probe_batch is for a sequence of batches; a single batch is itself the probe batch")
        probe_batch = batches
    else:
        if isinstance(batches, str | bytes) or not isinstance(batches, Sequence) or not batches:
            raise ConfigError("batches: a tensor of token ids (batch, length + 1) or a non-empty list of batches")
        probe_batch = batches[0] if probe_batch is None else probe_batch
    if (eval_batches is None) != (training.eval_every == 0):
        raise ConfigError(f"eval_batches={'None' if eval_batches is None else 'given'} with training.eval_every="
                          f"{training.eval_every}; the held-out loss needs both (or neither)")
    if eval_batches is not None and (isinstance(eval_batches, str | bytes | Tensor)
                                     or not isinstance(eval_batches, Sequence) or not eval_batches):
        raise ConfigError("eval_batches: a non-empty list of batches (token ids (batch, length + 1) for the default "
                          "loss)")
    loss_fn = loss if loss is not None else lm_loss
    norm_exprs = _convention_columns(conventions)
    family = resolve_family(make_model, pairs[0])
    discs = [family.discretizations(d) for d in grid.discretizations]
    if training.group_probes and not family.group_probes:
        raise ConfigError("training.group_probes=True: per-group update probes recompute ssmscope's MambaLM or "
                          "Mamba2LM with one parameter group moved; this model family has none")
    if training.group_probes and loss is not None:
        raise ConfigError("training.group_probes=True needs the default loss (the group probes run the model on "
                          "the probe batch's token ids)")
    shape = family.shape_at(*pairs[0])
    vocab = shape.vocab_size if shape else None
    pool = [batches] if isinstance(batches, Tensor) else list(batches)
    for i, b in enumerate(pool):
        _check_batch("batches" if isinstance(batches, Tensor) else f"batches[{i}]", b, vocab, token_ids=loss is None)
    if not isinstance(batches, Tensor):
        _check_batch("probe_batch", probe_batch, vocab, token_ids=loss is None)
    for i, b in enumerate(eval_batches or ()):
        _check_batch(f"eval_batches[{i}]", b, vocab, token_ids=loss is None)
    _check_memory(family, pairs, [*pool, probe_batch], torch.device(device), max_memory)

    common = {"steps": training.steps, "log_every": training.log_every, "weight_decay": training.weight_decay,
              "grads": training.grads, "state_prev": training.state_prev, "data": _fingerprint(batches, probe_batch),
              "loss": _loss_name(loss), "dtype": str(training.dtype) if training.dtype is not None else "default"}
    if training.eval_every:  # keys newer than the first stored checks: only in the ids of runs that use them
        common |= {"eval_every": training.eval_every, "eval_data": _fingerprint(list(eval_batches or ()), None)}
    if training.group_probes:
        common["group_probes"] = True
    context = _Context(family, loss_fn, batches, probe_batch, eval_batches, training, torch.device(device), name,
                       task, common)
    all_records: list[dict[str, Any]] = []
    made: dict[str, RunData] = {}
    for preset, disc, base_lr, seed, (n_u, n_x) in itertools.product(preset_objs, discs, grid.lrs, grid.seeds,
                                                                     pairs):
        setting = Setting(preset, disc, grid.optimizer, base_lr, seed, training.weight_decay, training.grads,
                          training.state_prev, training.scan)
        data, records = context.run(setting, n_u, n_x)
        made[data.row["run_id"]] = data
        all_records.extend(records)
        _report(progress, data.row)
    frame = rec.probe_frame(all_records, {r: d.row for r, d in made.items()})
    frame = frame.with_columns(norm_exprs) if norm_exprs else frame
    return (frame, Runs(made)) if return_runs else frame


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
