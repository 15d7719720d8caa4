"""The executor protocol: what a sweep hands to a backend, what comes back, and the task itself.

Every backend runs the same task, `execute`: `runs.sweeps.worker.run_one` on one RunConfig, which
writes the run's Parquet shard into a shard directory that the submitting side and every worker
can see (a path on a shared filesystem for a cluster). Nothing else travels back but
`(run_id, status)`; the submitting side (runs.sweeps.sweep) owns the rest — resume, retries, a
failed shard for a run whose worker died before writing one, and the one DuckDB ingest.

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
the standard library, the run spec and the shard writer (pyarrow) at module level, torch only
inside functions, and ray / submitit never.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from ssmscope.runs.store.schema import RunStatus
from ssmscope.runs.store.shards import write_shard
from ssmscope.runs.sweeps.record import run_record
from ssmscope.runs.sweeps.spec import RunConfig
from ssmscope.ssm.errors import ConfigError

OWNERS_KEY = "executors"
"""Metadata key of an ExecutorOptions field: the executors that read it."""
PACKAGES = {"ray": ("ray", "ray>=2.9"), "slurm": ("submitit", "submitit>=1.5")}
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
    hook: str = ""
    """A worker hook, `module:object` (WORKER_HOOK_ENV on the submitting side), shipped with the task so that every
    executor's workers see it; empty in real sweeps."""
    hook_data: str = ""
    """Text for the hook (WORKER_HOOK_DATA_ENV on the submitting side), read from the task in the worker."""

    @property
    def run_id(self) -> str:
        return self.cfg.run_id


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: str | None
    """A RunStatus value as run_one returned it; None when the task was lost."""
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


def resolve_device(device: str) -> str:
    """auto → cuda when this process sees a GPU, else cpu; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


WORKER_HOOK_ENV = "SSMSCOPE_WORKER_HOOK"
"""`module:object` whose `before_run(task)` and `at_step(task, step)` every worker calls: a plug-in point around
each task (the tests inject real faults through it — tests/faults.py). Unset in real sweeps."""
WORKER_HOOK_DATA_ENV = "SSMSCOPE_WORKER_HOOK_DATA"
"""Text the hook reads from `task.hook_data` (shipped with the task: a worker's own environment may differ)."""


class WorkerHook(Protocol):
    """What a worker hook offers (both are called in the worker process, around `run_one`)."""

    def before_run(self, task: Task) -> None: ...
    def at_step(self, task: Task, step: int) -> None: ...


def make_task(cfg: RunConfig, shard_root: Path, *, spec: str, device: str, scan: str, attempt: int) -> Task:
    return Task(cfg=cfg, shard_root=str(shard_root), spec=spec, device=device, scan=scan, attempt=attempt,
                hook=os.environ.get(WORKER_HOOK_ENV, ""), hook_data=os.environ.get(WORKER_HOOK_DATA_ENV, ""))


def load_hook(spec: str) -> WorkerHook | None:
    """The worker hook `module:object` names (None for ''); a ConfigError names what could not be loaded."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name or "HOOK")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{WORKER_HOOK_ENV}={spec!r} cannot be loaded ({exc}); allowed: module:object") from None


def execute(task: Task, progress: Callable[[int, int], None] | None = None, threads: int | None = None) -> str:
    """The task every backend runs: train one run, write its shard, return its status."""
    import torch

    from ssmscope.runs.sweeps.worker import run_one

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(task.device)
    hook = load_hook(task.hook)
    if hook is not None:
        hook.before_run(task)

    def on_step(step: int, total: int) -> None:
        if hook is not None:
            hook.at_step(task, step)
        if progress is not None:
            progress(step, total)

    return run_one(task.cfg, Path(task.shard_root), spec=task.spec, device=device, scan=task.scan,
                   progress=on_step)


def write_failed_shard(task: Task, error: str, started_at: str | None = None, wall_s: float | None = None) -> Path:
    """Record a run whose worker was lost before it wrote a shard (status failed, with the error)."""
    run = run_record(task.cfg, spec=task.spec, status=RunStatus.FAILED, error=error, started_at=started_at,
                     wall_s=wall_s, device=task.device, scan=task.scan)
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


@dataclass
class ExecutorOptions:
    """What the CLI's sweep flags configure. Each field's metadata names the executors that read it
    (OWNERS_KEY): a value given for another executor is a mistake, refused by `misplaced` in one line."""

    workers: int | None = field(default=None, metadata={OWNERS_KEY: ("local",)})
    address: str | None = field(default=None, metadata={OWNERS_KEY: ("ray",)})
    cpus_per_task: float = field(default=1, metadata={OWNERS_KEY: ("ray", "slurm")})
    gpus_per_task: float = field(default=0, metadata={OWNERS_KEY: ("ray", "slurm")})
    partition: str | None = field(default=None, metadata={OWNERS_KEY: ("slurm",)})
    time_min: int = field(default=60, metadata={OWNERS_KEY: ("slurm",)})
    cluster: str = field(default="slurm", metadata={OWNERS_KEY: ("slurm",)})
    array_parallelism: int | None = field(default=None, metadata={OWNERS_KEY: ("slurm",)})
    slurm_params: dict[str, Any] = field(default_factory=dict, metadata={OWNERS_KEY: ("slurm",), "flag": "slurm-param"})

    def misplaced(self, executor: str) -> str | None:
        """One line naming the first option set away from its default that `executor` does not read, or None."""
        for f in fields(self):
            owners = f.metadata[OWNERS_KEY]
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if executor not in owners and getattr(self, f.name) != default:
                flag = f.metadata.get("flag", f.name.replace("_", "-"))
                return f"--{flag} applies to --executor {' or '.join(owners)} (got --executor {executor})"
        return None


def execute_task(task: Task, threads: int) -> tuple[str, str]:
    """`execute` as a remote task (Ray, Slurm): (run id, status), so the submitting side knows whose outcome."""
    return task.run_id, execute(task, threads=threads)
