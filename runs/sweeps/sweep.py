"""Run a sweep: expand a spec, skip finished runs (resume), execute, ingest, summarise.

Runs go to an executor (runs.sweeps.executors): `local` (inline for one worker, else worker processes;
default), `ray` or `slurm`. Each task writes its run's shard into one shard directory; the store
is touched only by the final ingest, here on the submitting side. Resume works across executors:
a run whose shard says completed or diverged is skipped whichever executor wrote it.

A run that fails — run_one records an exception, or the task is lost (raised outside run_one,
worker process killed, node lost, job timed out) — is marked failed with its error (for a lost
task the submitting side writes the failed shard, unless the run had already written a finished
one) and retried up to `retries` times. Ctrl-C stops the sweep after ingesting every shard
already written (rerun to resume).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from ssmscope.runs.store.db import IngestReport, finished_run_ids, ingest, shard_dir_for
from ssmscope.runs.store.schema import FINISHED_STATUSES, RunStatus
from ssmscope.runs.store.shards import shard_status
from ssmscope.runs.sweeps.executors import (
    Executor,
    ExecutorOptions,
    Task,
    make_executor,
    make_task,
    write_failed_shard,
)
from ssmscope.runs.sweeps.record import now_iso
from ssmscope.runs.sweeps.spec import RunConfig, SweepSpec


@dataclass
class SweepReport:
    total: int = 0
    skipped: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    """run_id → first line of the error, for runs whose final status is failed."""
    interrupted: bool = False
    ingest: IngestReport | None = None
    wall_s: float = 0.0
    executor: str = "local"
    retried: int = 0
    """Attempts that failed and were retried."""
    attempt_errors: dict[str, list[str]] = field(default_factory=dict)
    """run_id → first line of the error of each failed attempt (retried or final)."""


class _NullProgress:
    def start(self, total: int) -> None: ...
    def begin_run(self, cfg: RunConfig) -> None: ...
    def step(self, run_id: str, step: int, total: int) -> None: ...
    def end_run(self, run_id: str, status: str) -> None: ...
    def stop(self) -> None: ...


def run_sweep(spec: SweepSpec, db_path: Path, *, device: str = "auto", workers: int | None = None,
              scan: str = "auto", retries: int = 1, progress=None, executor: str | Executor = "local",
              options: ExecutorOptions | None = None, shard_root: Path | None = None) -> SweepReport:
    """Execute every unfinished run of `spec` on `executor`, then ingest all shards into `db_path`.

    `executor` is a name ("local", "ray", "slurm", configured by `options`; `workers` is the local
    worker count) or an Executor instance. `shard_root` defaults to `<db dir>/shards`
    ($SSMSCOPE_SHARDS); for a cluster it must be a path every worker can write."""
    progress = progress or _NullProgress()
    shard_root = Path(shard_root if shard_root is not None else shard_dir_for(db_path)).absolute()
    shard_root.mkdir(parents=True, exist_ok=True)
    if isinstance(executor, str):
        opts = replace(options or ExecutorOptions(), **({"workers": workers} if workers is not None else {}))
        executor = make_executor(executor, opts)
    report = SweepReport(total=spec.n_runs, executor=executor.name)
    t0 = time.perf_counter()
    unique = {cfg.run_id: cfg for cfg in spec.runs}
    done = finished_run_ids(shard_root, unique)
    report.skipped = len(done)
    todo = [cfg for rid, cfg in unique.items() if rid not in done]
    progress.start(len(todo))
    started, finished_cleanly, error = False, False, None
    try:
        if todo:
            started = True
            task_device = executor.start(device=device, shard_root=shard_root)
            _drive(executor, todo, shard_root, spec.name, task_device, scan, retries, progress, report)
        finished_cleanly = True
    except KeyboardInterrupt:
        report.interrupted = True
    except Exception as exc:  # the executor broke mid-sweep (cluster lost): keep what was written
        if not started:
            raise
        error = exc
    finally:
        if started:
            executor.close(cancel=not finished_cleanly)
        progress.stop()
    report.ingest = ingest(db_path, shard_root)
    report.failures = _failures(shard_root, [c.run_id for c in todo])
    report.wall_s = time.perf_counter() - t0
    if error is not None:
        raise error
    return report


def _drive(executor: Executor, todo: list[RunConfig], shard_root: Path, spec_name: str, device: str, scan: str,
           retries: int, progress, report: SweepReport) -> None:
    """Hand runs to the executor as it has room, settle outcomes, retry failures."""
    pending = deque(todo)
    in_flight: dict[str, tuple[Task, str, float]] = {}  # run_id → (task, started_at, t0)
    attempts: Counter = Counter()
    while pending or in_flight:
        n = min(executor.capacity(), len(pending))
        if n:
            batch = []
            for cfg in (pending.popleft() for _ in range(n)):
                attempts[cfg.run_id] += 1
                task = make_task(cfg, shard_root, spec=spec_name, device=device, scan=scan,
                                 attempt=attempts[cfg.run_id])
                in_flight[cfg.run_id] = (task, now_iso(), time.perf_counter())
                if executor.reports_steps:
                    progress.begin_run(cfg)
                batch.append(task)
            executor.submit(batch)
        for out in executor.poll(executor.poll_s, progress.step):
            task, started_at, t_submit = in_flight.pop(out.run_id)
            status = out.status
            if status is None:  # the task was lost before run_one could report
                status = shard_status(shard_root, out.run_id)
                if status not in FINISHED_STATUSES:  # it had not written a finished shard: record the failure
                    write_failed_shard(task, f"worker lost ({executor.name}): {out.error}", started_at,
                                       time.perf_counter() - t_submit)
                    status = RunStatus.FAILED
            if status == RunStatus.FAILED:
                err = _failures(shard_root, [out.run_id]).get(out.run_id, "")
                report.attempt_errors.setdefault(out.run_id, []).append(err)
                if attempts[out.run_id] <= retries:
                    report.retried += 1
                    pending.append(task.cfg)
                    continue
            report.statuses[status] += 1
            progress.end_run(out.run_id, status)


def _failures(shard_root: Path, run_ids: list[str]) -> dict[str, str]:
    import pyarrow.parquet as pq

    out = {}
    for rid in run_ids:
        path = shard_root / rid / "runs.parquet"
        if path.exists():
            row = pq.read_table(path, columns=["status", "error"]).to_pylist()[0]
            if row["status"] == RunStatus.FAILED:
                out[rid] = (row["error"] or "").splitlines()[0] if row["error"] else ""
    return out
