"""Sweeps: spec validation, end-to-end into DuckDB, resume, divergence, failures, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_spec_toml
from typer.testing import CliRunner

from ssmscope.runs.cli.main import app
from ssmscope.runs.store.db import counts, load_runs
from ssmscope.runs.sweeps.spec import load_spec, parse_spec
from ssmscope.runs.sweeps.sweep import run_sweep
from ssmscope.ssm import ConfigError

TINY = tiny_spec_toml()


def _spec(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('presets = ["sp", "mup-ssm"]', 'presets = ["sp", "nope"]', "grid.presets[1]"),
        ("lrs = [0.01]", "lrs = [0.01]\nwidth = [3]", "grid.width: unknown key"),
        ("steps = 2", 'steps = "two"', "train.steps"),
        ("widths = [16, 32]", "widths = [0, 32]", "grid.widths[0]"),
        ("widths = [16, 32]", "widths = [-16]", "grid.widths[0]"),
        ("seeds = [0]", "seeds = []", "grid.seeds"),
        ('discretizations = ["zoh"]', 'discretizations = ["rk4"]', "grid.discretizations[0]"),
        ("batch = 2", "batch = 2\nlearning_rate = 3", "train.learning_rate: unknown key"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, old, new, key):
    text = TINY.replace(old, new)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_spec(_spec(tmp_path, text))
    result = CliRunner().invoke(app, ["sweep", str(_spec(tmp_path, text)), "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.output.count("\n") <= 2


def test_builtin_specs_load_with_expected_grids():
    smoke = load_spec("smoke")
    assert smoke.n_runs == 3 * 3 * 2 * 2
    fig = load_spec("paper-figure")
    assert sorted({r.n_u for r in fig.runs}) == [32, 64, 128, 256, 512]
    assert {r.seed for r in fig.runs} == {0, 1, 2}
    assert all(r.n_u == r.n_x for r in fig.runs)
    table = load_spec("paper-table")
    assert len({(r.n_u, r.n_x) for r in table.runs}) == 9
    assert all(r.dt_min == 0.1 and r.dt_max == 1.0 for r in load_spec("paper-figure-asymptotic").runs)


def test_run_ids_are_stable_hashes_of_the_config():
    a = parse_spec(__import__("tomllib").loads(TINY), "a").runs
    b = parse_spec(__import__("tomllib").loads(TINY), "b").runs
    assert [r.run_id for r in a] == [r.run_id for r in b]
    assert len({r.run_id for r in a}) == len(a)


def test_sweep_fills_the_store_and_resume_skips_finished_runs(tmp_path):
    db = tmp_path / "store.duckdb"
    spec = load_spec(_spec(tmp_path))
    first = run_sweep(spec, db, device="cpu", workers=1)
    assert first.statuses["completed"] == 4 and first.skipped == 0
    n = counts(db)
    assert n["runs"] == 4 and n["losses"] == 4 * 3
    # per run: 3 logged steps × 2 layers × (x, y, cx, block_out) × 3 quantities + grads, + params
    assert n["probes"] > 4 * 3 * 2 * 12
    again = run_sweep(spec, db, device="cpu", workers=1)
    assert again.skipped == 4 and sum(again.statuses.values()) == 0
    assert counts(db) == n  # idempotent ingest: nothing duplicated


def test_diverging_run_is_recorded_and_sweep_completes(tmp_path):
    text = TINY.replace("lrs = [0.01]", "lrs = [0.01, 1e6]").replace('optimizers = ["adam"]', 'optimizers = ["sgd"]')
    text = text.replace("steps = 2", "steps = 6")
    db = tmp_path / "store.duckdb"
    report = run_sweep(load_spec(_spec(tmp_path, text)), db, device="cpu")
    runs = load_runs(db)
    assert report.statuses["diverged"] >= 1 and report.statuses["completed"] >= 4
    diverged = runs.filter(runs["status"] == "diverged")
    assert (diverged["lr"] == 1e6).all()
    assert (diverged["last_finite_step"] < 6).all()
    assert len(runs) == 8


def test_failing_run_is_marked_failed_with_its_error(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[preset]\nname = 'broken'\n")  # no [roles]
    text = TINY.replace('presets = ["sp", "mup-ssm"]', f'presets = ["sp", "{bad}"]')
    db = tmp_path / "store.duckdb"
    report = run_sweep(load_spec(_spec(tmp_path, text)), db, device="cpu", retries=1)
    assert report.statuses["failed"] == 2 and report.statuses["completed"] == 2
    assert all("missing table [roles]" in err for err in report.failures.values())
    runs = load_runs(db)
    assert set(runs["status"]) == {"completed", "failed"}


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-m", "ssmscope.runs.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_minus_9_then_resume_loses_and_duplicates_nothing(tmp_path):
    text = TINY.replace("seeds = [0]", "seeds = [0, 1, 2]").replace("steps = 2", "steps = 4")
    spec = _spec(tmp_path, text)
    reference_db = tmp_path / "ref" / "store.duckdb"
    assert _cli("sweep", str(spec), "--db", str(reference_db), "--device", "cpu", cwd=tmp_path).wait() == 0
    db = tmp_path / "killed" / "store.duckdb"
    proc = _cli("sweep", str(spec), "--db", str(db), "--device", "cpu", cwd=tmp_path)
    shards = db.parent / "store.duckdb.shards"
    deadline = time.time() + 120
    while time.time() < deadline and len([p for p in shards.glob("*") if not p.name.startswith(".")]) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _cli("sweep", str(spec), "--db", str(db), "--device", "cpu", cwd=tmp_path).wait() == 0
    assert counts(db) == counts(reference_db)


def test_worker_path_imports_without_polars_duckdb_streamlit(tmp_path):
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {{'polars', 'duckdb', 'streamlit', 'plotly', 'typer', 'rich'}}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from ssmscope.runs.sweeps.spec import RunConfig
from ssmscope.runs.sweeps.worker import run_one
cfg = RunConfig(preset='mup-ssm', discretization='euler', optimizer='adam', lr=0.01, seed=0, n_u=16, n_x=16,
                steps=1, batch=2, seq_len=8, n_layers=1)
print(run_one(cfg, {str(tmp_path)!r}))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "completed"
