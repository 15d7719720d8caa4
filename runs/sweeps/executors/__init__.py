"""Where a sweep's runs execute: local worker processes, a Ray cluster, or Slurm through submitit.

    base     the protocol (Executor, Task, Outcome), the task every backend runs (`execute`)
    local    inline, or spawned worker processes on this machine
    ray      one Ray task per run
    slurm    submitit job arrays
`make_executor(name, options)` builds one from the sweep's flags; ray and slurm import their
packages only when started.
"""

from __future__ import annotations

from ssmscope.runs.sweeps.executor_names import ExecutorName, SlurmCluster
from ssmscope.runs.sweeps.executors.base import (
    PACKAGES,
    WORKER_HOOK_DATA_ENV,
    WORKER_HOOK_ENV,
    Executor,
    ExecutorOptions,
    ExecutorUnavailable,
    Outcome,
    Task,
    WorkerHook,
    error_text,
    execute,
    load_hook,
    make_task,
    require,
    resolve_device,
    write_failed_shard,
)
from ssmscope.ssm.errors import ConfigError

EXECUTORS = tuple(e.value for e in ExecutorName)

__all__ = [
    "EXECUTORS",
    "PACKAGES",
    "WORKER_HOOK_DATA_ENV",
    "WORKER_HOOK_ENV",
    "Executor",
    "ExecutorName",
    "ExecutorOptions",
    "ExecutorUnavailable",
    "Outcome",
    "SlurmCluster",
    "Task",
    "WorkerHook",
    "error_text",
    "execute",
    "load_hook",
    "make_executor",
    "make_task",
    "require",
    "resolve_device",
    "write_failed_shard",
]


def make_executor(name: str, options: ExecutorOptions | None = None) -> Executor:
    """An executor by name ("local", "ray", "slurm") from the sweep flags."""
    o = options or ExecutorOptions()
    if name == "local":
        from ssmscope.runs.sweeps.executors.local import LocalExecutor

        return LocalExecutor(workers=o.workers)
    if name == "ray":
        from ssmscope.runs.sweeps.executors.ray import RayExecutor

        return RayExecutor(address=o.address, num_cpus=o.cpus_per_task, num_gpus=o.gpus_per_task)
    if name == "slurm":
        if o.gpus_per_task != int(o.gpus_per_task) or o.cpus_per_task != int(o.cpus_per_task):
            raise ConfigError("--executor slurm: --cpus-per-task and --gpus-per-task must be whole numbers")
        from ssmscope.runs.sweeps.executors.slurm import SlurmExecutor

        return SlurmExecutor(cluster=o.cluster, partition=o.partition, time_min=o.time_min,
                             cpus_per_task=int(o.cpus_per_task), gpus_per_task=int(o.gpus_per_task),
                             array_parallelism=o.array_parallelism, params=o.slurm_params)
    raise ConfigError(f"--executor={name!r}; allowed: {', '.join(EXECUTORS)}")
