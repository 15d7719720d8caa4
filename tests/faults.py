"""Fault injection for the executor and sweep tests: make chosen runs raise or kill their worker, for real.

The tests of resume, retries and lost workers need real faults in real worker processes. `inject(monkeypatch,
{run_id: mode[@attempt]})` points the workers' plug-in point (runs.sweeps.executors.base.WORKER_HOOK_ENV) at
`HOOK` below and gives it the faults as JSON (WORKER_HOOK_DATA_ENV, shipped with each task), with this folder on
PYTHONPATH so that spawned worker processes and submitit jobs import it too (Ray workers: the test's cluster
puts it on their path). Modes: raise (an exception inside the run at step 1; run_one
records it), task-raise (an exception in the task before run_one), kill (the worker process SIGKILLs itself at
step 1). `@N`: only on attempt N. Nothing of this is in the package: a real sweep has no hook.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from ssmscope.runs.sweeps.executors import WORKER_HOOK_DATA_ENV, WORKER_HOOK_ENV

FAULT_MODES = ("raise", "task-raise", "kill")
HOOK_SPEC = "faults:HOOK"
"""This module's hook, as WORKER_HOOK_ENV names it (the tests folder is on the workers' path)."""


def fault_of(task: Any) -> str:
    """The fault for this attempt of this task's run (its hook data), or ''."""
    spec = str(json.loads(task.hook_data or "{}").get(task.run_id, ""))
    mode, _, only = spec.partition("@")
    assert not mode or mode in FAULT_MODES, f"unknown fault mode {mode!r}"
    return "" if only and int(only) != task.attempt else mode


class FaultHook:
    """The worker hook: task-raise before the run, raise or kill from step 1 on."""

    def before_run(self, task: Any) -> None:
        if fault_of(task) == "task-raise":
            raise RuntimeError(f"injected test fault (task-raise) in run {task.run_id}")

    def at_step(self, task: Any, step: int) -> None:
        fault = fault_of(task)
        if fault == "raise" and step >= 1:
            raise RuntimeError(f"injected test fault (raise) in run {task.run_id} at step {step}")
        if fault == "kill" and step >= 1:
            os.kill(os.getpid(), signal.SIGKILL)


HOOK = FaultHook()


def inject(monkeypatch: Any, faults: dict[str, str]) -> None:
    """Make the runs of `faults` fail as their modes say, in any executor's workers."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv(WORKER_HOOK_DATA_ENV, json.dumps(faults))
    monkeypatch.setenv(WORKER_HOOK_ENV, HOOK_SPEC)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))


def clear(monkeypatch: Any) -> None:
    """No faults and no hook (a test's plain environment)."""
    monkeypatch.delenv(WORKER_HOOK_DATA_ENV, raising=False)
    monkeypatch.delenv(WORKER_HOOK_ENV, raising=False)
