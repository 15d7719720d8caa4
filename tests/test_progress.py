"""Sweep progress without a terminal: a plain line every few seconds (nohup, Slurm logs, `| tee`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_spec_toml
from rich.console import Console

from ssmscope.runs.cli.progress import LineSweepProgress, RichSweepProgress, clock, progress_interval
from ssmscope.runs.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def _configs(tmp_path: Path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(tiny_spec_toml())
    return load_spec(spec).runs


class FakeClock:
    """A monotonic clock the test moves by hand: elapsed times and ETAs are exact, whatever the machine's load."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _wait_for_ticks(out: io.StringIO, text: str, n: int, timeout_s: float = 60.0) -> list[str]:
    """Poll until `n` tick lines ending in `text` have been printed (the ticker prints on its own)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ticks = [line for line in out.getvalue().splitlines() if line.startswith("[sweep ") and line.endswith(text)]
        if len(ticks) >= n:
            return ticks
        time.sleep(0.01)
    raise AssertionError(f"fewer than {n} lines ending {text!r} in {timeout_s} s: {out.getvalue()!r}")


def test_lines_come_on_their_own_while_runs_are_busy(tmp_path):
    out = io.StringIO()
    runs = _configs(tmp_path)
    now = FakeClock()
    progress = LineSweepProgress(Console(file=out, width=200), every=0.01, now=now)
    progress.start(len(runs))
    assert out.getvalue().splitlines()[0] == "[sweep 00:00] 0/4 runs finished · 0 running"
    for cfg in runs[:2]:
        progress.begin_run(cfg)
    now.t += 65
    # no call at all while the runs are busy: the ticker still prints, with the elapsed time
    assert _wait_for_ticks(out, "0/4 runs finished · 2 running", 3)[0] == "[sweep 01:05] 0/4 runs finished · 2 running"
    now.t += 5  # before the runs end, so that any tick printed after them shows the same time as the last line
    progress.end_run(runs[0].run_id, "completed")
    progress.end_run(runs[1].run_id, "diverged")
    progress.stop()
    lines = out.getvalue().splitlines()
    assert f"  run {runs[1].run_id}: diverged" in lines and f"  run {runs[0].run_id}: completed" not in lines
    assert lines[-1] == "[sweep 01:10] 2/4 runs finished (1 completed, 1 diverged) · 0 running · ETA 01:10"


def test_rich_progress_prints_lines_when_the_console_is_not_a_terminal(tmp_path):
    out = io.StringIO()
    progress = RichSweepProgress(Console(file=out, width=200))
    assert progress.lines is not None
    progress.start(1)
    progress.end_run("abc", "completed")
    progress.stop()
    assert out.getvalue().splitlines()[-1].startswith("[sweep 00:00] 1/1 runs finished (1 completed)")
    assert RichSweepProgress(Console(file=io.StringIO(), force_terminal=True)).lines is None


def test_interval_and_clock(monkeypatch):
    monkeypatch.setenv("SSMSCOPE_PROGRESS_EVERY", "2.5")
    assert progress_interval() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("SSMSCOPE_PROGRESS_EVERY", bad)
        assert progress_interval() == 10.0
    assert (clock(65), clock(3725)) == ("01:05", "1:02:05")


@pytest.mark.slow
def test_a_sweep_piped_to_a_file_prints_progress_lines_before_its_summary(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(tiny_spec_toml())
    env = {**os.environ, "SSMSCOPE_PROGRESS_EVERY": "0.5", "PYTHONPATH": str(ROOT)}
    cli = Path(sys.executable).with_name("ssmscope")
    done = subprocess.run([str(cli), "sweep", str(spec), "--db", str(tmp_path / "s.duckdb"), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    ticks = [i for i, line in enumerate(lines) if line.startswith("[sweep ")]
    summary = next(i for i, line in enumerate(lines) if line.startswith("summary"))
    assert len(ticks) >= 2 and ticks[-1] < summary
    assert lines[ticks[-1]].startswith("[sweep") and "4/4 runs finished (4 completed)" in lines[ticks[-1]]
