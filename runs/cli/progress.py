"""Sweep progress: live bars on a terminal, a plain progress line every few seconds anywhere else.

On a terminal, rich draws one overall bar (runs, ETA) and one bar per active run. Without one (nohup,
a Slurm log, `| tee`), rich would print nothing until the sweep ends, so the same calls print a line
such as

    [sweep 02:10] 12/90 runs finished (10 completed, 1 diverged, 1 failed) · 2 running · ETA 14:20

every PROGRESS_EVERY_S seconds (SSMSCOPE_PROGRESS_EVERY overrides it), from a background thread so that
a line comes even while every worker is deep inside a long run. Both implement the progress protocol
of runs.sweeps.sweep.run_sweep (start, begin_run, step, end_run, stop).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ssmscope.runs.store.schema import RunStatus
from ssmscope.runs.sweeps.spec import RunConfig

PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines when stdout is not a terminal."""
PROGRESS_ENV = "SSMSCOPE_PROGRESS_EVERY"


def describe(cfg: RunConfig) -> str:
    return (f"{cfg.preset:>7} {cfg.discretization:<5} {cfg.optimizer:<5} lr={cfg.lr:<7g} "
            f"N_u={cfg.n_u:<4} N_x={cfg.n_x:<4} seed={cfg.seed}")


def progress_interval() -> float:
    """PROGRESS_EVERY_S, or $SSMSCOPE_PROGRESS_EVERY when it is a positive number of seconds."""
    try:
        value = float(os.environ.get(PROGRESS_ENV, ""))
    except ValueError:
        return PROGRESS_EVERY_S
    return value if value > 0 else PROGRESS_EVERY_S


def clock(seconds: float) -> str:
    """12:05 or 1:02:03."""
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class LineSweepProgress:
    """The progress protocol as a plain line every `every` seconds (for logs: no cursor movement)."""

    def __init__(self, console: Console, every: float | None = None, now=time.monotonic) -> None:
        self.console = console
        self.every = every if every is not None else progress_interval()
        self.now = now
        self.total = 0
        self.statuses: Counter[str] = Counter()
        self.running: set[str] = set()
        self.started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._printed: tuple | None = None  # the state the last line showed

    def line(self) -> str:
        """The progress line now: finished of total, by status, running, elapsed and the ETA."""
        with self._lock:
            done, running = sum(self.statuses.values()), len(self.running)
            by_status = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        elapsed = self.now() - self.started
        eta = f" · ETA {clock(elapsed / done * (self.total - done))}" if 0 < done < self.total else ""
        detail = f" ({by_status})" if by_status else ""
        return (f"[sweep {clock(elapsed)}] {done}/{self.total} runs finished{detail} · {running} running{eta}")

    def _state(self) -> tuple:
        with self._lock:
            return tuple(sorted(self.statuses.items())), len(self.running)

    def _print(self) -> None:
        self._printed = self._state()
        self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._print()

    def start(self, total: int) -> None:
        self.total, self.started = total, self.now()
        self._print()
        self._thread = threading.Thread(target=self._tick, name="sweep-progress", daemon=True)
        self._thread.start()

    def begin_run(self, cfg: RunConfig) -> None:
        with self._lock:
            self.running.add(cfg.run_id)

    def step(self, run_id: str, step: int, total: int) -> None:  # a line per step would flood a log
        pass

    def end_run(self, run_id: str, status: str) -> None:
        with self._lock:
            self.running.discard(run_id)
            self.statuses[status] += 1
        if status != RunStatus.COMPLETED:
            self.console.print(f"  run {run_id}: {status}", markup=False, highlight=False)

    def stop(self) -> None:
        """Stop the ticker; a last line unless the last tick already said the same."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._printed != self._state():
            self._print()


class RichSweepProgress:
    """Implements the progress protocol of runs.sweeps.sweep.run_sweep: live bars on a terminal, else
    LineSweepProgress (rich prints nothing until the end when the console is not a terminal)."""

    def __init__(self, console: Console | None = None):
        console = console or Console()
        self.lines = None if console.is_terminal else LineSweepProgress(console)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.overall = None
        self.active: dict[str, int] = {}

    def start(self, total: int) -> None:
        if self.lines is not None:
            return self.lines.start(total)
        self.progress.start()
        self.overall = self.progress.add_task("[bold]runs", total=total)

    def begin_run(self, cfg: RunConfig) -> None:
        if self.lines is not None:
            return self.lines.begin_run(cfg)
        if cfg.run_id not in self.active:
            self.active[cfg.run_id] = self.progress.add_task(f"  {describe(cfg)}", total=cfg.steps + 1)

    def step(self, run_id: str, step: int, total: int) -> None:
        if self.lines is not None:
            return None
        task = self.active.get(run_id)
        if task is not None:
            self.progress.update(task, completed=step + 1, total=total + 1)

    def end_run(self, run_id: str, status: str) -> None:
        if self.lines is not None:
            return self.lines.end_run(run_id, status)
        task = self.active.pop(run_id, None)
        if task is not None:
            self.progress.remove_task(task)
        if status != RunStatus.COMPLETED:
            self.progress.console.print(f"  run {run_id}: [yellow]{status}[/yellow]")
        self.progress.advance(self.overall)

    def stop(self) -> None:
        if self.lines is not None:
            return self.lines.stop()
        self.progress.stop()
