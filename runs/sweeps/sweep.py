"""Run a sweep: check what can be checked, skip finished runs (resume), execute, ingest as runs finish, summarise.

Before any run trains, the presets, the device and every run's memory are checked
(runs.sweeps.preflight), and the shard folder and the store are each written once, so a
read-only, full or locked store fails now, not after the training. Runs go to an executor
(runs.sweeps.executors): `local` (inline for one worker, else worker processes; default), `ray` or
`slurm`. Each task writes its run's shard into the store's shard folder (runs.store.layout);
finished runs are ingested in small batches while the sweep runs (runs.sweeps.live_ingest) and
whatever is left at the end. Resume works across executors: a run whose shard says completed or
diverged, and reads as a whole shard, is skipped whichever executor wrote it.

A run that fails — run_one records an exception, or the task is lost (raised outside run_one,
worker process killed, node lost, job timed out) — is marked failed with its error (for a lost
task the submitting side writes the failed shard, unless the run had already written a finished
one) and retried up to `retries` times. If that failed shard cannot be written, the failure is
kept in the report; if the shard folder is full or read-only, scheduling stops.

Ctrl-C and SIGTERM (runs.sweeps.signals) stop scheduling, let finished runs publish, stop the
workers and ingest what was written (exit 130 / 143; rerun to resume). Nothing written is lost: a
store still locked after the final wait keeps its shards for a later `ssmscope ingest`, and a
sweep's own error is raised, never replaced by a later ingest failure (that becomes a note on it).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ssmscope.runs.store import queries
from ssmscope.runs.store.db import (
    IngestInterrupted,
    IngestReport,
    StoreError,
    StoreLocked,
    check_writable,
    connect,
    finished_run_ids,
    ingest,
    shard_dir_for,
)
from ssmscope.runs.store.errors import FOLDER_WIDE_ERRNOS, storage_error
from ssmscope.runs.store.layout import Migration, resolve_shard_dir
from ssmscope.runs.store.ownership import check_shard_root
from ssmscope.runs.store.schema import FINISHED_STATUSES, RunStatus
from ssmscope.runs.store.shards import check_folder_writable, shard_status
from ssmscope.runs.sweeps.executors import (
    Executor,
    ExecutorOptions,
    Task,
    make_executor,
    make_task,
    write_failed_shard,
)
from ssmscope.runs.sweeps.live_ingest import LIVE_EVERY, LIVE_INTERVAL_S, LiveIngest
from ssmscope.runs.sweeps.preflight import AUTO, check_plan
from ssmscope.runs.sweeps.record import now_iso
from ssmscope.runs.sweeps.signals import stop_signals
from ssmscope.runs.sweeps.spec import RunConfig, SweepSpec

FINAL_LOCK_WAIT_S = 60.0
"""How long the sweep's checks and its final ingest wait for a store held by another process."""
Notify = Callable[[str], None]


@dataclass
class SweepReport:
    total: int = 0
    skipped: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    """run_id → first line of the error, for runs whose final status is failed."""
    interrupted: bool = False
    signal: int | None = None
    """The signal that stopped the sweep (SIGINT, SIGTERM), when one did."""
    ingest: IngestReport | None = None
    """The final ingest (all shards of the folder)."""
    wall_s: float = 0.0
    executor: str = "local"
    retried: int = 0
    """Attempts that failed and were retried."""
    attempt_errors: dict[str, list[str]] = field(default_factory=dict)
    """run_id → first line of the error of each failed attempt (retried or final)."""
    run_ids: tuple[str, ...] = ()
    """This sweep's runs."""
    shard_root: Path | None = None
    migration: Migration | None = None
    own_ingested: int = 0
    """This sweep's runs loaded into the store (while it ran and at its end)."""
    other_ingested: int = 0
    """Runs of other writers sharing the shard folder, loaded by this sweep's ingests."""
    live_rounds: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)
    unrecorded: dict[str, str] = field(default_factory=dict)
    """run_id → a failure whose failed shard could not be written (kept here instead)."""
    stopped_by: str | None = None
    """Why scheduling stopped early (the shard folder is full or read-only), one line."""
    ingest_error: str | None = None
    """Why the final ingest did not load everything (locked, full, interrupted), one line with the fix."""
    ingest_problems: str | None = None
    """Shards the final ingest set aside or left (quarantined, newer, busy), one line."""
    ran: list[str] = field(default_factory=list)
    """This sweep's runs that trained to an outcome in this invocation (not the skipped ones)."""
    lost: list[str] = field(default_factory=list)
    """Runs of `ran` that are neither in the store nor in the shard folder after the final ingest: their shards
    vanished (the shard folder deleted or moved during the sweep)."""

    @property
    def exit_code(self) -> int:
        """128 + signal when stopped by one; 2 for a storage fault or runs whose shards vanished (nothing trained is
        lost to a fault; the line says what to do); 1 when runs failed (some or all: rerunning retries them); else 0
        (diverged runs are results, not failures)."""
        if self.interrupted:
            return 128 + (self.signal or 2)
        if self.stopped_by or self.ingest_error or self.lost:
            return 2
        return 1 if self.statuses.get(RunStatus.FAILED, 0) else 0

    def failed_line(self) -> str | None:
        """How many of the runs this sweep trained failed, in one line (None: none did)."""
        failed, ran = self.statuses.get(RunStatus.FAILED, 0), sum(self.statuses.values())
        if not failed:
            return None
        what = f"all {ran} runs" if failed == ran else f"{failed} of {ran} runs"
        return (f"{what} this sweep trained failed (errors above); finished runs are stored: rerun the same command "
                "to retry the failed ones")

    def lost_line(self) -> str | None:
        """One line naming the runs whose shards vanished before they were stored, or None."""
        if not self.lost:
            return None
        shown = ", ".join(self.lost[:6]) + (f" and {len(self.lost) - 6} more" if len(self.lost) > 6 else "")
        return (f"{len(self.lost)} run(s) of this sweep trained but are not stored: their shards vanished from "
                f"{self.shard_root} before they were ingested (was the folder deleted or moved?): {shown}; "
                "rerun the same command to train them again")


class _NullProgress:
    def start(self, total: int) -> None: ...
    def begin_run(self, cfg: RunConfig) -> None: ...
    def step(self, run_id: str, step: int, total: int) -> None: ...
    def end_run(self, run_id: str, status: str) -> None: ...
    def stop(self) -> None: ...


def run_sweep(spec: SweepSpec, db_path: Path, *, device: str = "auto", workers: int | None = None,
              scan: str = "auto", retries: int = 1, progress=None, executor: str | Executor = "local",
              options: ExecutorOptions | None = None, shard_root: Path | None = None,
              max_memory: int | str | None = AUTO, live_every: int = LIVE_EVERY,
              live_interval_s: float = LIVE_INTERVAL_S, lock_wait_s: float = FINAL_LOCK_WAIT_S,
              notify: Notify | None = None) -> SweepReport:
    """Execute every unfinished run of `spec` on `executor`, ingesting into `db_path` as runs finish.

    `executor` is a name ("local", "ray", "slurm", configured by `options`; `workers` is the local
    worker count) or an Executor instance. `shard_root` defaults to the store's own shard folder
    (`<db dir>/<db name>.shards`, $SSMSCOPE_SHARDS); for a cluster it must be a path every worker can
    write. `max_memory`: bytes one run may use, AUTO (this machine, local executor) or None (no check).
    `live_every` / `live_interval_s`: ingest while running after that many finished runs or seconds
    (0 runs: only at the end). `lock_wait_s`: how long to wait for a store another process holds.
    `notify` hears one-line messages (waiting for a lock, a layout migration)."""
    progress = progress or _NullProgress()
    tell = notify or (lambda message: None)
    db_path = Path(db_path)
    name = executor if isinstance(executor, str) else executor.name
    n_workers = workers if workers is not None or isinstance(executor, str) else getattr(executor, "workers", None)
    check_plan(spec, device, name, n_workers, max_memory, scan)
    root, migration = _prepare_storage(db_path, shard_root, lock_wait_s, tell)
    if isinstance(executor, str):
        opts = replace(options or ExecutorOptions(), **({"workers": workers} if workers is not None else {}))
        executor = make_executor(executor, opts)
    unique = {cfg.run_id: cfg for cfg in spec.runs}
    report = SweepReport(total=spec.n_runs, executor=executor.name, run_ids=tuple(unique), shard_root=root,
                         migration=migration)
    t0 = time.perf_counter()
    done = finished_run_ids(root, unique)
    report.skipped = len(done)
    todo = [cfg for rid, cfg in unique.items() if rid not in done]
    live = LiveIngest(db_path, root, live_every, live_interval_s)
    progress.start(len(todo))
    started, finished_cleanly, error = False, False, None
    with stop_signals() as signals:
        try:
            if todo:
                started = True
                task_device = executor.start(device=device, shard_root=root)
                _drive(executor, todo, root, spec.name, task_device, scan, retries, progress, report, live)
            finished_cleanly = True
        except KeyboardInterrupt:
            report.interrupted = True
        except Exception as exc:  # the executor broke mid-sweep (cluster lost): keep what was written
            if not started:
                raise
            error = exc
        finally:
            _close(executor, started, cancel=not finished_cleanly)
            progress.stop()
        _final_ingest(report, db_path, root, live, lock_wait_s, tell)
        if not report.ingest_error:
            report.lost = _vanished(db_path, root, [r for r in report.ran if r not in report.unrecorded])
        report.signal = signals.received if report.interrupted else None
    report.live_rounds = live.rounds
    report.failures = {**_failures(root, [c.run_id for c in todo]),
                       **{r: e.splitlines()[0] for r, e in report.unrecorded.items()}}
    report.wall_s = time.perf_counter() - t0
    if error is not None:
        if report.ingest_error:
            error.add_note(f"also: {report.ingest_error}")
        raise error
    return report


def _prepare_storage(db_path: Path, shard_root: Path | None, wait_s: float,
                     tell: Notify) -> tuple[Path, Migration | None]:
    """Create the store's folder, resolve (and migrate) the shard folder, and write to both once."""
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, db_path.parent, "create the store's folder") or StoreError(
            f"cannot create the store's folder {db_path.parent}: {exc.strerror or exc}") from None
    try:
        root, migration = resolve_shard_dir(db_path, shard_root)
        root = root.absolute()
        check_shard_root(root)  # a folder of the user's files (`--shards ~`): refused before anything is written
        check_folder_writable(root)
    except OSError as exc:
        where = shard_root or shard_dir_for(db_path)
        raise storage_error(exc, where, "write shards to") or StoreError(
            f"cannot write shards to {where}: {exc.strerror or exc}") from None
    check_writable(db_path, wait_s=wait_s, on_wait=tell)
    if migration is not None:
        tell(migration.describe())
    return root, migration


def _close(executor: Executor, started: bool, cancel: bool) -> None:
    """Stop the executor's workers; a second Ctrl-C while they stop only makes it quicker."""
    if not started:
        return
    try:
        executor.close(cancel=cancel)
    except KeyboardInterrupt:
        executor.close(cancel=True)


def _ingest_hint(db_path: Path, root: Path) -> str:
    shards = "" if root == shard_dir_for(db_path).absolute() else f" --shards {root}"
    return f"`ssmscope ingest --db {db_path}{shards}`"


def _final_ingest(report: SweepReport, db_path: Path, root: Path, live: LiveIngest, wait_s: float,
                  tell: Notify) -> None:
    """Load every shard of the folder; on failure say so in one line — the shards stay for a later ingest."""
    final: IngestReport | None = None
    kept = f"the shards stay in {root}: run {_ingest_hint(db_path, root)}"
    try:
        final = ingest(db_path, root, wait_s=wait_s, on_wait=tell)
    except IngestInterrupted as exc:
        report.interrupted, final = True, exc.report
        report.ingest_error = f"interrupted while ingesting; {kept} to finish (nothing trained is lost)"
    except KeyboardInterrupt:
        report.interrupted = True
        report.ingest_error = f"interrupted before ingesting; {kept} (nothing trained is lost)"
    except StoreLocked as exc:
        report.ingest_error = f"{exc}; {kept} when it is free (nothing trained is lost)"
    except StoreError as exc:
        report.ingest_error = f"{exc}; {kept} once that is fixed (nothing trained is lost)"
    reports = [*live.reports, *([final] if final is not None else [])]
    ingested = {rid for r in reports for rid in r.ingested}
    own = set(report.run_ids)
    report.own_ingested, report.other_ingested = len(ingested & own), len(ingested - own)
    report.quarantined = {rid: why for r in reports for rid, why in r.quarantined.items()}
    report.ingest = final
    report.ingest_problems = final.problems() if final is not None else None


def _drive(executor: Executor, todo: list[RunConfig], shard_root: Path, spec_name: str, device: str, scan: str,
           retries: int, progress, report: SweepReport, live: LiveIngest) -> None:
    """Hand runs to the executor as it has room, settle outcomes, retry failures, ingest as runs finish."""
    pending = deque(todo)
    in_flight: dict[str, tuple[Task, str, float]] = {}  # run_id → (task, started_at, t0)
    attempts: Counter = Counter()
    while pending or in_flight:
        if report.stopped_by:  # the shard folder cannot take more: finish what runs, schedule nothing
            pending.clear()
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
                    _record_lost(task, f"worker lost ({executor.name}): {out.error}", started_at,
                                 time.perf_counter() - t_submit, report)
                    status = RunStatus.FAILED
            if status == RunStatus.FAILED:
                err = _failures(shard_root, [out.run_id]).get(out.run_id) or \
                    report.unrecorded.get(out.run_id, "").split("\n")[0]
                report.attempt_errors.setdefault(out.run_id, []).append(err)
                if attempts[out.run_id] <= retries and not report.stopped_by:
                    report.retried += 1
                    report.unrecorded.pop(out.run_id, None)
                    pending.append(task.cfg)
                    continue
            report.statuses[status] += 1
            report.ran.append(out.run_id)
            progress.end_run(out.run_id, status)
            live.finished(out.run_id)
        live.tick()


def _vanished(db_path: Path, root: Path, run_ids: list[str]) -> list[str]:
    """Runs among `run_ids` that have neither a row in the store nor a shard in `root` (their shards vanished)."""
    if not run_ids:
        return []
    try:
        con = connect(db_path, read_only=True)
    except StoreError:  # held by a writer right now: cannot tell, say nothing
        return []
    try:
        stored = {r for (r,) in con.execute(queries.STORED_RUN_IDS, [list(run_ids)]).fetchall()}
    finally:
        con.close()
    return [r for r in run_ids if r not in stored and not (root / r).is_dir()]


def _record_lost(task: Task, error: str, started_at: str, wall_s: float, report: SweepReport) -> None:
    """Write the failed shard of a lost task; when it cannot be written keep the failure in the report, and
    stop scheduling when the whole folder cannot take writes (full, read-only)."""
    try:
        write_failed_shard(task, error, started_at, wall_s)
    except OSError as exc:
        report.unrecorded[task.run_id] = f"{error} (its failed shard could not be written: {exc.strerror or exc})"
        if exc.errno in FOLDER_WIDE_ERRNOS and report.stopped_by is None:
            report.stopped_by = str(storage_error(exc, task.shard_root, "write shards to"))


def _failures(shard_root: Path, run_ids: list[str]) -> dict[str, str]:
    """run_id → first line of the error of runs whose shard says failed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    for rid in run_ids:
        path = shard_root / rid / "runs.parquet"
        try:
            row = pq.read_table(path, columns=["status", "error"]).to_pylist()[0]
        except (OSError, pa.ArrowException, IndexError, KeyError):
            continue
        if row["status"] == RunStatus.FAILED:
            out[rid] = (row["error"] or "").splitlines()[0] if row["error"] else ""
    return out
