"""Where a sweep's runs execute: local worker processes, a Ray cluster, or Slurm through submitit.

Every backend runs the same task, `execute`: `runs.worker.run_one` on one RunConfig, which
writes the run's Parquet shard into a shard directory that the submitting side and every
worker can see (a path on a shared filesystem for a cluster). Nothing else travels back but
`(run_id, status)`; the submitting side (runs.sweep) owns the rest — resume, retries, a failed
shard for a run whose worker died before writing one, and the one DuckDB ingest.

The interface (`Executor`) is deliberately small:
  start(device=, shard_root=) -> device   the device string tasks get ("auto" may resolve per worker)
  capacity() -> int                         how many more tasks to hand over now
  submit(tasks)                             hand over a batch (Slurm: one job array)
  poll(timeout, on_step) -> [Outcome]       outcomes that arrived; on_step(run_id, step, total) for
                                            backends that report steps (local only)
  close(cancel=)                            stop workers; cancel=True also cancels queued/running tasks
An Outcome carries the status `run_one` returned, or status None and an error text when the
task itself was lost (raised outside run_one, worker process killed, node lost, job timed out).

This module is imported by the workers (Ray tasks, submitit jobs, local processes): it imports
the standard library, runs.spec and runs.shards (pyarrow) at module level, torch only inside
functions, and ray / submitit only on the submitting side.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmscope.probes.schema import SCHEMA_VERSION
from ssmscope.runs.store.shards import config_json, write_shard
from ssmscope.runs.sweeps.spec import RunConfig
from ssmscope.ssm.errors import ConfigError

EXECUTORS = ("local", "ray", "slurm")
PACKAGES = {"ray": ("ray", "ray>=2.9"), "slurm": ("submitit", "submitit>=1.5")}
FAULTS_ENV = "SSMSCOPE_TEST_FAULTS"
"""Test-only fault injection: JSON {run_id: mode[@attempt]} read on the submitting side.
mode: raise (exception inside the run at step 1; run_one records it), task-raise (exception in the
task before run_one), kill (the worker process SIGKILLs itself at step 1). `@N`: only on attempt N."""
FAULT_MODES = ("raise", "task-raise", "kill")
ERROR_CHARS = 4000

StepFn = Callable[[str, int, int], None]


class ExecutorUnavailable(ConfigError):
    """The executor's package is not installed (the CLI prints this as one line, exit 2)."""


@dataclass(frozen=True)
class Task:
    """One attempt of one run, as shipped to a worker (picklable)."""

    cfg: RunConfig
    shard_root: str
    spec: str = ""
    device: str = "auto"
    scan: str = "auto"
    attempt: int = 1
    fault: str = ""
    """Test-only (see FAULTS_ENV); empty in real sweeps."""

    @property
    def run_id(self) -> str:
        return self.cfg.run_id


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: str | None
    """completed | diverged | failed as run_one returned it; None when the task was lost."""
    error: str = ""
    """Why the task was lost (status None)."""


def require(executor: str) -> Any:
    """Import the package an executor needs, or raise ExecutorUnavailable naming the pip install."""
    if executor not in PACKAGES:
        return None
    module, requirement = PACKAGES[executor]
    try:
        return __import__(module)
    except ImportError:
        raise ExecutorUnavailable(f"--executor {executor} needs the {module} package, which is not installed: "
                                  f"pip install '{requirement}'") from None


def error_text(exc: BaseException, limit: int = ERROR_CHARS) -> str:
    """'Type: message' plus whatever traceback the exception carries, without ANSI colours."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError wraps the task's exception
    head = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else f"{type(exc).__name__}: {exc}"
    body = str(exc) if isinstance(cause, BaseException) else "".join(traceback.format_tb(exc.__traceback__, 8))
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{head}\n{body}".strip())
    return text[:limit]


def injected_fault(run_id: str, attempt: int) -> str:
    """The test fault for this attempt of this run (FAULTS_ENV), or ''."""
    raw = os.environ.get(FAULTS_ENV)
    if not raw:
        return ""
    try:
        spec = str(json.loads(raw).get(run_id, ""))
    except (ValueError, AttributeError):
        raise ConfigError(f"{FAULTS_ENV}={raw!r}; allowed: a JSON object {{run_id: mode[@attempt]}}") from None
    mode, _, only = spec.partition("@")
    if mode and mode not in FAULT_MODES:
        raise ConfigError(f"{FAULTS_ENV}: mode {mode!r}; allowed: {', '.join(FAULT_MODES)}")
    if only and int(only) != attempt:
        return ""
    return mode


def make_task(cfg: RunConfig, shard_root: Path, *, spec: str, device: str, scan: str, attempt: int) -> Task:
    return Task(cfg=cfg, shard_root=str(shard_root), spec=spec, device=device, scan=scan, attempt=attempt,
                fault=injected_fault(cfg.run_id, attempt))


def execute(task: Task, progress: Callable[[int, int], None] | None = None, threads: int | None = None) -> str:
    """The task every backend runs: train one run, write its shard, return its status."""
    import torch

    from ssmscope.runs.sweeps.worker import run_one

    if threads:
        torch.set_num_threads(threads)
    device = task.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if task.fault == "task-raise":
        raise RuntimeError(f"injected test fault (task-raise) in run {task.run_id}")

    def on_step(step: int, total: int) -> None:
        if task.fault == "raise" and step >= 1:
            raise RuntimeError(f"injected test fault (raise) in run {task.run_id} at step {step}")
        if task.fault == "kill" and step >= 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if progress is not None:
            progress(step, total)

    return run_one(task.cfg, Path(task.shard_root), spec=task.spec, device=device, scan=task.scan,
                   progress=on_step)


def write_failed_shard(task: Task, error: str, started_at: str | None = None, wall_s: float | None = None) -> Path:
    """Record a run whose worker was lost before it wrote a shard (status failed, with the error)."""
    cfg = task.cfg
    now = dt.datetime.now(dt.UTC).isoformat()
    run = {
        "run_id": cfg.run_id, "spec": task.spec, "status": "failed", "last_finite_step": -1, "error": error,
        **{k: getattr(cfg, k) for k in ("preset", "discretization", "optimizer", "lr", "seed", "n_u",
                                        "n_x", "n_layers", "steps", "batch", "seq_len", "task",
                                        "fixed_batch", "dt_min", "dt_max")},
        "d_model": cfg.d_model, "config_json": config_json(cfg.to_dict()),
        "started_at": started_at or now, "finished_at": now, "wall_s": wall_s, "device": task.device,
        "scan": task.scan, "hostname": "", "schema_version": SCHEMA_VERSION,
    }
    return write_shard(Path(task.shard_root), run, [], [])


class Executor:
    """Base class; see the module docstring for the protocol."""

    name = "base"
    reports_steps = False
    poll_s = 0.5

    def start(self, *, device: str, shard_root: Path) -> str:
        return device

    def capacity(self) -> int:
        return sys.maxsize

    def submit(self, tasks: list[Task]) -> None:
        raise NotImplementedError

    def poll(self, timeout: float, on_step: StepFn) -> list[Outcome]:
        raise NotImplementedError

    def close(self, cancel: bool = False) -> None:
        return None


# ---------------------------------------------------------------- local: inline or worker processes


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _local_worker_main(conn, env: dict[str, str], threads: int) -> None:
    """A local worker process: receive Tasks over its pipe, send steps and outcomes back."""
    os.environ.update(env)  # before torch: CUDA_VISIBLE_DEVICES and thread counts
    try:
        import torch

        torch.set_num_threads(threads)
        while True:
            task = conn.recv()
            if task is None:
                return
            try:
                status = execute(task, progress=lambda step, total: conn.send(("step", step, total)))
                conn.send(("done", status, ""))
            except Exception as exc:
                conn.send(("error", None, error_text(exc)))
    except (KeyboardInterrupt, EOFError, OSError):  # Ctrl-C, or the submitting process is gone
        return


@dataclass
class _Slot:
    index: int
    env: dict[str, str]
    proc: Any = None
    conn: Any = None
    task: Task | None = None


def _death_text(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"worker process died (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"worker process died (signal {-code})"
    return f"worker process died (exit code {code})" if code is not None else "lost contact with the worker process"


class LocalExecutor(Executor):
    """This machine. workers=1: inline in this process (today's default). More: spawned worker
    processes; on CUDA one per visible GPU (default) pinned through CUDA_VISIBLE_DEVICES, on the CPU
    `workers` processes with cpu_count // workers torch threads each. A worker that dies is noticed
    through its process sentinel, its run reported lost, and the worker replaced."""

    name = "local"
    reports_steps = True
    poll_s = 0.2

    def __init__(self, workers: int | None = None):
        self.workers = workers
        self.slots: list[_Slot] = []
        self._inline: Task | None = None
        self._ctx = None
        self._threads = 1

    def start(self, *, device: str, shard_root: Path) -> str:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        gpus = visible_gpus() if device == "cuda" else []
        if self.workers is None:
            self.workers = max(1, len(gpus)) if device == "cuda" else 1
        cpus = os.cpu_count() or 1
        if self.workers <= 1:
            torch.set_num_threads(max(1, cpus))
            return device
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")
        self._threads = max(1, cpus // self.workers)
        for i in range(self.workers):
            env = {"OMP_NUM_THREADS": str(self._threads), "MKL_NUM_THREADS": str(self._threads)}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            slot = _Slot(i, env)
            self._spawn(slot)
            self.slots.append(slot)
        return device

    @property
    def inline(self) -> bool:
        return self._ctx is None

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        slot.proc = self._ctx.Process(target=_local_worker_main, args=(child, slot.env, self._threads),
                                      name=f"ssmscope-worker-{slot.index}", daemon=True)
        slot.proc.start()
        child.close()
        slot.conn = parent

    def _retire(self, slot: _Slot) -> None:
        if slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(timeout=5)
        slot.conn.close()

    def capacity(self) -> int:
        if self.inline:
            return 0 if self._inline else 1
        return sum(1 for s in self.slots if s.task is None)

    def submit(self, tasks: list[Task]) -> None:
        for task in tasks:
            if self.inline:
                self._inline = task
                continue
            slot = next(s for s in self.slots if s.task is None)
            if not slot.proc.is_alive():
                self._retire(slot)
                self._spawn(slot)
            try:
                slot.conn.send(task)
            except OSError:
                self._retire(slot)
                self._spawn(slot)
                slot.conn.send(task)
            slot.task = task

    def poll(self, timeout: float, on_step: StepFn) -> list[Outcome]:
        if self.inline:
            return self._poll_inline(on_step)
        from multiprocessing.connection import wait

        busy = [s for s in self.slots if s.task is not None]
        if not busy:
            time.sleep(timeout)
            return []
        wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout)
        out = []
        for slot in busy:
            alive = slot.proc.is_alive()  # before draining: a message sent before death is in the pipe by now
            rid = slot.task.run_id
            broken = False
            while slot.task is not None:
                try:
                    if not slot.conn.poll():
                        break
                    kind, a, b = slot.conn.recv()
                except (EOFError, OSError):
                    broken = True
                    break
                if kind == "step":
                    on_step(rid, a, b)
                else:
                    out.append(Outcome(rid, a, b))
                    slot.task = None
            if slot.task is not None and (broken or not alive):
                slot.proc.join(timeout=1)
                out.append(Outcome(rid, None, _death_text(slot.proc)))
                slot.task = None
                self._retire(slot)
                self._spawn(slot)
        return out

    def _poll_inline(self, on_step: StepFn) -> list[Outcome]:
        task, self._inline = self._inline, None
        if task is None:
            return []
        try:
            status = execute(task, progress=lambda step, total: on_step(task.run_id, step, total))
        except Exception as exc:
            return [Outcome(task.run_id, None, error_text(exc))]
        return [Outcome(task.run_id, status)]

    def close(self, cancel: bool = False) -> None:
        for slot in self.slots:
            if slot.proc.is_alive() and not cancel and slot.task is None:
                try:
                    slot.conn.send(None)
                except OSError:
                    pass
            else:
                slot.proc.terminate()
        for slot in self.slots:
            slot.proc.join(timeout=5)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(timeout=5)
            slot.conn.close()
        self.slots = []


# ---------------------------------------------------------------- Ray


def _ray_task(task: Task, threads: int) -> tuple[str, str]:
    return task.run_id, execute(task, threads=threads)


class RayExecutor(Executor):
    """One Ray task per run (num_cpus / num_gpus each), no Ray-level retries (the sweep retries).

    address None or "local": start a local cluster (or reuse the one this process already has);
    "auto": the cluster `ray start` runs on this node; "ray://host:10001": Ray Client. Workers
    must import ssmscope (installed on every node, or `init_kwargs={"runtime_env": ...}`)."""

    name = "ray"
    poll_s = 0.5

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 init_kwargs: dict[str, Any] | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.init_kwargs = dict(init_kwargs or {})
        self._owns = False
        self._refs: dict[Any, Task] = {}
        self._remote = None

    def start(self, *, device: str, shard_root: Path) -> str:
        ray = require("ray")
        if not ray.is_initialized():
            local = self.address in (None, "local")
            kwargs = {"log_to_driver": False, **({"include_dashboard": False} if local else {}), **self.init_kwargs}
            try:
                ray.init(address=None if local else self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"--address={self.address!r}: cannot start or reach a Ray cluster "
                                  f"({first})") from None
            self._owns = True
        self._remote = ray.remote(_ray_task).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                     max_retries=0, retry_exceptions=False, name="ssmscope-run")
        return device

    def submit(self, tasks: list[Task]) -> None:
        threads = max(1, int(self.num_cpus))
        for task in tasks:
            self._refs[self._remote.remote(task, threads)] = task

    def poll(self, timeout: float, on_step: StepFn) -> list[Outcome]:
        import ray

        if not self._refs:
            time.sleep(timeout)
            return []
        refs = list(self._refs)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            task = self._refs.pop(ref)
            try:
                rid, status = ray.get(ref)
                out.append(Outcome(rid, status))
            except ray.exceptions.RayError as exc:  # task raised, worker crashed, node died, object lost
                out.append(Outcome(task.run_id, None, error_text(exc)))
        return out

    def close(self, cancel: bool = False) -> None:
        import ray

        if cancel:
            for ref in self._refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished, or the cluster is gone
                    pass
        self._refs = {}
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False


# ---------------------------------------------------------------- Slurm (submitit)


def _submitit_task(task: Task, threads: int) -> tuple[str, str]:
    return task.run_id, execute(task, threads=threads)


def _job_error(job, exc: Exception) -> str:
    """A readable first line for a submitit job error, then submitit's own message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if type(exc).__name__ == "FailedJobError":  # the function raised: its last traceback line says what
        trace = text.split("-" * 22)
        lines = [ln.strip() for ln in (trace[1] if len(trace) > 2 else text).splitlines() if ln.strip()]
        head = lines[-1] if lines else "the job failed"
    elif type(exc).__name__ == "UncompletedJobError":
        state = getattr(job, "state", "unknown")
        head = (f"job {job.job_id} ended without a result (state {state}): the process was killed, ran out "
                f"of time, or its node was lost; log {job.paths.stderr}")
    else:
        head = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    return f"{head}\n{text}"[:ERROR_CHARS]


class SlurmExecutor(Executor):
    """Slurm job arrays through submitit (no sbatch scripts): one array task per run.

    cluster="slurm" submits with sbatch (partition, time limit, CPUs and GPUs per task); "local"
    runs each job as a subprocess of this machine (submitit's LocalExecutor) — for tests and for
    trying a setup. Job logs and pickles go to `log_dir` (default: `<shards>/../submitit/<job id>`)."""

    name = "slurm"

    def __init__(self, *, cluster: str = "slurm", partition: str | None = None, time_min: int = 60,
                 cpus_per_task: int = 1, gpus_per_task: int = 0, mem_gb: float | None = None,
                 array_parallelism: int | None = None, max_in_flight: int | None = None,
                 log_dir: Path | None = None, params: dict[str, Any] | None = None):
        if cluster not in ("slurm", "local"):
            raise ConfigError(f"cluster={cluster!r}; allowed: slurm, local")
        self.cluster = cluster
        self.partition = partition
        self.time_min = time_min
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.mem_gb = mem_gb
        self.array_parallelism = array_parallelism
        self.max_in_flight = max_in_flight
        self.log_dir = log_dir
        self.params = dict(params or {})
        self.poll_s = 5.0 if cluster == "slurm" else 0.2
        self._jobs: list[tuple[Any, Task]] = []
        self._ex = None
        self.folder: Path | None = None

    def start(self, *, device: str, shard_root: Path) -> str:
        submitit = require("slurm")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm: sbatch is not on PATH; run the sweep on a Slurm login node "
                              "(or --cluster local to try the setup on this machine)")
        self.folder = Path(self.log_dir) if self.log_dir else Path(shard_root).parent / "submitit"
        self._ex = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        p: dict[str, Any] = {"name": "ssmscope", "timeout_min": int(self.time_min), "nodes": 1, "tasks_per_node": 1,
                             "cpus_per_task": int(self.cpus_per_task)}
        if self.gpus_per_task:
            p["gpus_per_node"] = int(self.gpus_per_task)
        if self.mem_gb:
            p["mem_gb"] = self.mem_gb
        if self.cluster == "slurm":
            if self.partition:
                p["slurm_partition"] = self.partition
            if self.array_parallelism:
                p["slurm_array_parallelism"] = int(self.array_parallelism)
            p.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in self.params.items()})
        try:
            self._ex.update_parameters(**p)
        except (NameError, ValueError, AssertionError) as exc:
            raise ConfigError(f"--executor slurm: {str(exc).splitlines()[0]}") from None
        return device

    def capacity(self) -> int:
        if self.max_in_flight:
            limit = self.max_in_flight
        elif self.cluster == "local":
            limit = max(1, (os.cpu_count() or 1) // max(1, int(self.cpus_per_task)))
        else:
            return sys.maxsize  # Slurm queues them; --array-parallelism limits how many run at once
        return max(0, limit - len(self._jobs))

    def submit(self, tasks: list[Task]) -> None:
        threads = max(1, int(self.cpus_per_task))
        try:
            jobs = self._ex.map_array(_submitit_task, tasks, [threads] * len(tasks))
        except Exception as exc:  # sbatch refused the array (partition, account, limits)
            raise ConfigError(f"slurm submission failed: {error_text(exc).splitlines()[0]}") from None
        for job, task in zip(jobs, tasks, strict=True):
            if self.cluster == "local":
                job._results_timeout_s = 2  # a killed local job has no result file to wait for
            self._jobs.append((job, task))

    def poll(self, timeout: float, on_step: StepFn) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while True:
            out, keep = [], []
            for job, task in self._jobs:
                if not job.done():
                    keep.append((job, task))
                    continue
                try:
                    rid, status = job.result()
                    out.append(Outcome(rid, status))
                except Exception as exc:  # raised in the job, killed, timed out, node failure
                    out.append(Outcome(task.run_id, None, _job_error(job, exc)))
            self._jobs = keep
            left = deadline - time.monotonic()
            if out or left <= 0 or not self._jobs:
                return out
            time.sleep(min(0.2 if self.cluster == "local" else 2.0, left))  # each check stats every job's result

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for job, _ in self._jobs:
                try:
                    job.cancel(check=False)
                except Exception:  # already gone
                    pass
        self._jobs = []


@dataclass
class ExecutorOptions:
    """What the CLI's sweep flags configure (each backend reads its own)."""

    workers: int | None = None
    address: str | None = None
    cpus_per_task: float = 1
    gpus_per_task: float = 0
    partition: str | None = None
    time_min: int = 60
    cluster: str = "slurm"
    array_parallelism: int | None = None
    slurm_params: dict[str, Any] = field(default_factory=dict)


def make_executor(name: str, options: ExecutorOptions | None = None) -> Executor:
    """An executor by name ("local", "ray", "slurm") from the sweep flags."""
    o = options or ExecutorOptions()
    if name == "local":
        return LocalExecutor(workers=o.workers)
    if name == "ray":
        return RayExecutor(address=o.address, num_cpus=o.cpus_per_task, num_gpus=o.gpus_per_task)
    if name == "slurm":
        if o.gpus_per_task != int(o.gpus_per_task) or o.cpus_per_task != int(o.cpus_per_task):
            raise ConfigError("--executor slurm: --cpus-per-task and --gpus-per-task must be whole numbers")
        return SlurmExecutor(cluster=o.cluster, partition=o.partition, time_min=o.time_min,
                             cpus_per_task=int(o.cpus_per_task), gpus_per_task=int(o.gpus_per_task),
                             array_parallelism=o.array_parallelism, params=o.slurm_params)
    raise ConfigError(f"--executor={name!r}; allowed: {', '.join(EXECUTORS)}")
