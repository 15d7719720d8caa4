"""Test-only fault injection for executors: make chosen runs raise or kill their worker.

The tests of resume, retries and lost workers need real faults in real worker processes. The
submitting side reads FAULTS_ENV — JSON {run_id: mode[@attempt]} — and ships the fault with the
task; the worker applies it. Modes: raise (an exception inside the run at step 1; run_one
records it), task-raise (an exception in the task before run_one), kill (the worker process
SIGKILLs itself at step 1). `@N`: only on attempt N. Empty in real sweeps.
"""

from __future__ import annotations

import json
import os
import signal

from ssmscope.ssm.errors import ConfigError

FAULTS_ENV = "SSMSCOPE_TEST_FAULTS"
FAULT_MODES = ("raise", "task-raise", "kill")


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


def before_run(fault: str, run_id: str) -> None:
    """Apply a task-level fault (before the run starts)."""
    if fault == "task-raise":
        raise RuntimeError(f"injected test fault (task-raise) in run {run_id}")


def at_step(fault: str, run_id: str, step: int) -> None:
    """Apply a fault inside the run, from step 1 on."""
    if fault == "raise" and step >= 1:
        raise RuntimeError(f"injected test fault (raise) in run {run_id} at step {step}")
    if fault == "kill" and step >= 1:
        os.kill(os.getpid(), signal.SIGKILL)
