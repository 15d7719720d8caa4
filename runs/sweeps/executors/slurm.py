"""The Slurm executor: job arrays through submitit (or submitit's local executor, to try a setup)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ssmscope.runs.sweeps.executors.base import (
    ERROR_CHARS,
    Executor,
    Outcome,
    StepFn,
    Task,
    error_text,
    execute_task,
    require,
)
from ssmscope.ssm.errors import ConfigError


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
            jobs = self._ex.map_array(execute_task, tasks, [threads] * len(tasks))
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
