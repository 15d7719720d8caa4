"""The local executor: runs inline in this process, or in spawned worker processes on this machine.

Worker processes die with the sweep: Linux delivers them SIGTERM when their parent dies
(prctl PR_SET_PDEATHSIG), and a worker waiting for its next task sees the pipe close. A worker
writing a shard when SIGTERM comes finishes publishing it first (runs.store.shards).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssmscope.runs.sweeps.executors.base import (
    Executor,
    Outcome,
    StepFn,
    Task,
    error_text,
    execute,
    resolve_device,
)


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


PR_SET_PDEATHSIG = 1
"""prctl option: the signal this process gets when its parent dies (linux/prctl.h)."""


def die_with_parent(parent_pid: int) -> None:
    """Have Linux send this process SIGTERM when its parent dies; exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the pipe's EOF is the only signal
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _local_worker_main(conn, env: dict[str, str], threads: int, parent_pid: int) -> None:
    """A local worker process: receive Tasks over its pipe, send steps and outcomes back."""
    die_with_parent(parent_pid)
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

        device = resolve_device(device)
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
        slot.proc = self._ctx.Process(target=_local_worker_main, args=(child, slot.env, self._threads, os.getpid()),
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
