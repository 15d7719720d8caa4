"""Signals against a real `ssmscope sweep` with 2 local worker processes: SIGTERM stops it like Ctrl-C
(finished runs ingested, workers stopped, exit 143, resume completes it), and workers die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_spec_toml

from ssmscope.runs.store.db import counts, shard_dir_for
from ssmscope.runs.store.shards import list_shards
from ssmscope.runs.sweeps.spec import load_spec
from ssmscope.runs.sweeps.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SPEC = (tiny_spec_toml(widths=(16,)).replace("seeds = [0]", "seeds = [0, 1, 2]").replace("steps = 2", "steps = 4")
        .replace("n_layers = 2", "n_layers = 1"))  # 6 short runs
RUNS = 6


def _sweep(spec: Path, db: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SSMSCOPE_SHARDS", None)
    return subprocess.Popen([sys.executable, "-m", "ssmscope.runs.cli.main", "sweep", str(spec), "--db", str(db),
                             "--device", "cpu", "--workers", "2", "--ingest-every", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def workers_of(pid: int) -> list[int]:
    """Live worker processes (multiprocessing spawn children) whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")]


def test_sigterm_with_two_workers_ingests_what_is_done_stops_workers_and_exits_143(tmp_path):
    spec = tmp_path / "signals.toml"
    spec.write_text(SPEC)
    reference = tmp_path / "ref" / "store.duckdb"
    assert run_sweep(load_spec(spec), reference, device="cpu", workers=1).statuses == {"completed": RUNS}
    db = tmp_path / "term" / "store.duckdb"
    proc = _sweep(spec, db)
    shards = shard_dir_for(db)
    assert _wait_for(lambda: len(list_shards(shards)) >= 1, 180), proc.communicate()[0]
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "Traceback" not in out and "interrupted" in out
    assert _wait_for(lambda: not any(alive(w) for w in workers), 20)
    published = len(list_shards(shards))
    assert 1 <= published < RUNS and counts(db)["runs"] == published  # everything written was ingested
    resume = _sweep(spec, db)
    out, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0, out
    assert f"{RUNS - published} completed, 0 diverged, 0 failed, {published} skipped" in out
    assert counts(db) == counts(reference)


def test_worker_processes_die_with_their_parent(tmp_path):
    spec = tmp_path / "signals.toml"
    spec.write_text(SPEC)
    proc = _sweep(spec, tmp_path / "store.duckdb")
    assert _wait_for(lambda: len(workers_of(proc.pid)) == 2, 120), proc.communicate()[0]
    workers = workers_of(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    assert _wait_for(lambda: not any(alive(w) for w in workers), 20), [w for w in workers if alive(w)]
