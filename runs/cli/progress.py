"""Rich progress display for sweeps: one overall bar (runs, ETA) and one bar per active run."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ssmscope.runs.sweeps.spec import RunConfig


def describe(cfg: RunConfig) -> str:
    return (f"{cfg.preset:>7} {cfg.discretization:<5} {cfg.optimizer:<5} lr={cfg.lr:<7g} "
            f"N_u={cfg.n_u:<4} N_x={cfg.n_x:<4} seed={cfg.seed}")


class RichSweepProgress:
    """Implements the progress protocol of runs.sweep.run_sweep."""

    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.overall = None
        self.active: dict[str, int] = {}

    def start(self, total: int) -> None:
        self.progress.start()
        self.overall = self.progress.add_task("[bold]runs", total=total)

    def begin_run(self, cfg: RunConfig) -> None:
        if cfg.run_id not in self.active:
            self.active[cfg.run_id] = self.progress.add_task(f"  {describe(cfg)}", total=cfg.steps + 1)

    def step(self, run_id: str, step: int, total: int) -> None:
        task = self.active.get(run_id)
        if task is not None:
            self.progress.update(task, completed=step + 1, total=total + 1)

    def end_run(self, run_id: str, status: str) -> None:
        task = self.active.pop(run_id, None)
        if task is not None:
            self.progress.remove_task(task)
        if status != "completed":
            self.progress.console.print(f"  run {run_id}: [yellow]{status}[/yellow]")
        self.progress.advance(self.overall)

    def stop(self) -> None:
        self.progress.stop()
