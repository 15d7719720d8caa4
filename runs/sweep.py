"""Run a sweep: expand a spec, skip finished runs (resume), execute, ingest, summarise.

Execution is local here: runs go to a pool of worker processes (or run inline with one
worker), each writing its own shard; the store is touched only by the final ingest. A run
that raises is marked failed with its error and retried up to `retries` times; Ctrl-C stops
the sweep after ingesting every shard already written (rerun to resume).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from runs.spec import RunConfig, SweepSpec
from runs.store import IngestReport, finished_run_ids, ingest, shard_dir_for


@dataclass
class SweepReport:
    total: int = 0
    skipped: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    ingest: IngestReport | None = None
    wall_s: float = 0.0


def resolve_device(device: str) -> str:
    """auto → cuda when available, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _work(cfg: RunConfig, shard_root: str, spec: str, device: str, scan: str, progress_q) -> tuple[str, str]:
    from runs.worker import run_one

    def progress(step: int, total: int) -> None:
        if progress_q is not None:
            progress_q.put((cfg.run_id, step, total))

    status = run_one(cfg, Path(shard_root), spec=spec, device=device, scan=scan, progress=progress)
    return cfg.run_id, status


class _NullProgress:
    def start(self, total: int) -> None: ...
    def begin_run(self, cfg: RunConfig) -> None: ...
    def step(self, run_id: str, step: int, total: int) -> None: ...
    def end_run(self, run_id: str, status: str) -> None: ...
    def stop(self) -> None: ...


def run_sweep(spec: SweepSpec, db_path: Path, *, device: str = "auto", workers: int = 1, scan: str = "auto",
              retries: int = 1, progress=None) -> SweepReport:
    """Execute every unfinished run of `spec`, then ingest all shards into `db_path`."""
    progress = progress or _NullProgress()
    shard_root = shard_dir_for(db_path)
    shard_root.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    report = SweepReport(total=spec.n_runs)
    t0 = time.perf_counter()
    unique = {cfg.run_id: cfg for cfg in spec.runs}
    done = finished_run_ids(shard_root, unique)
    report.skipped = len(done)
    todo = [cfg for rid, cfg in unique.items() if rid not in done]
    progress.start(len(todo))
    attempts: Counter = Counter()
    try:
        if workers <= 1:
            _init_worker(max(1, os.cpu_count() or 1))
            pending = list(todo)
            while pending:
                cfg = pending.pop(0)
                progress.begin_run(cfg)
                attempts[cfg.run_id] += 1
                status = _inline(cfg, shard_root, spec.name, device, scan, progress)
                if status == "failed" and attempts[cfg.run_id] <= retries:
                    pending.append(cfg)
                    continue
                report.statuses[status] += 1
                progress.end_run(cfg.run_id, status)
        else:
            _run_pool(todo, shard_root, spec.name, device, scan, workers, retries, progress, report, attempts)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        progress.stop()
    report.ingest = ingest(db_path, shard_root)
    report.failures = _failures(shard_root, [c.run_id for c in todo])
    report.wall_s = time.perf_counter() - t0
    return report


def _inline(cfg: RunConfig, shard_root: Path, spec: str, device: str, scan: str, progress) -> str:
    from runs.worker import run_one

    return run_one(cfg, shard_root, spec=spec, device=device, scan=scan,
                   progress=lambda s, t: progress.step(cfg.run_id, s, t))


def _run_pool(todo, shard_root, spec_name, device, scan, workers, retries, progress, report, attempts) -> None:
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    progress_q = manager.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures: dict[Future, RunConfig] = {}

        def submit(cfg: RunConfig) -> None:
            attempts[cfg.run_id] += 1
            progress.begin_run(cfg)
            futures[pool.submit(_work, cfg, str(shard_root), spec_name, device, scan, progress_q)] = cfg

        pending = list(todo)
        try:
            while pending or futures:
                while pending and len(futures) < workers:
                    submit(pending.pop(0))
                finished, _ = wait(list(futures), timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress_q, progress)
                for fut in finished:
                    cfg = futures.pop(fut)
                    try:
                        _, status = fut.result()
                    except Exception:  # the worker process died (killed, out of memory)
                        status = "failed"
                    if status == "failed" and attempts[cfg.run_id] <= retries:
                        pending.append(cfg)
                        continue
                    report.statuses[status] += 1
                    progress.end_run(cfg.run_id, status)
        except KeyboardInterrupt:
            for fut in futures:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            manager.shutdown()


def _drain(progress_q, progress) -> None:
    while True:
        try:
            run_id, step, total = progress_q.get_nowait()
        except (queue.Empty, OSError, EOFError):
            return
        progress.step(run_id, step, total)


def _failures(shard_root: Path, run_ids: list[str]) -> dict[str, str]:
    import pyarrow.parquet as pq

    out = {}
    for rid in run_ids:
        path = shard_root / rid / "runs.parquet"
        if path.exists():
            row = pq.read_table(path, columns=["status", "error"]).to_pylist()[0]
            if row["status"] == "failed":
                out[rid] = (row["error"] or "").splitlines()[0] if row["error"] else ""
    return out
