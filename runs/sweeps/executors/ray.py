"""The Ray executor: one Ray task per run on a local or remote Ray cluster."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ssmscope.runs.sweeps.executors.base import (
    Executor,
    Outcome,
    StepFn,
    Task,
    error_text,
    execute_task,
    require,
)
from ssmscope.ssm.errors import ConfigError


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
        self._remote = ray.remote(execute_task).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
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
