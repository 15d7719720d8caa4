"""Executors: local processes, Ray and submitit produce the same store; failures are retried; resume crosses them.

The spec is a 4-run cut of `smoke` (smoke itself takes ~100 s on 2 cores per executor): widths 16 and
32, presets sp and mup-ssm, zoh, Adam, 2 steps of batch 2 × 16 tokens, 2 layers. submitit starts a
fresh Python (torch import, ~5 s) per job, so its test runs half of that grid (2 runs + 2 retries).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import duckdb
import faults
import pytest
from conftest import tiny_spec_toml
from typer.testing import CliRunner

from ssmscope.runs.cli.main import app
from ssmscope.runs.store.db import counts, load_runs
from ssmscope.runs.sweeps.executors.ray import RayExecutor
from ssmscope.runs.sweeps.spec import parse_spec
from ssmscope.runs.sweeps.sweep import run_sweep

SPEC = tiny_spec_toml("exec", seq_len=16)
HALF_SPEC = tiny_spec_toml("exec", seq_len=16, widths=(16,))
KEYS = ("run_id", "step", "layer", "site", "quantity", '"group"')


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


needs_ray = pytest.mark.skipif(not _has("ray"), reason="ray is not installed (pip install 'ray>=2.9')")
needs_submitit = pytest.mark.skipif(not _has("submitit"),
                                    reason="submitit is not installed (pip install 'submitit>=1.5')")


@pytest.fixture(scope="module")
def spec():
    return parse_spec(tomllib.loads(SPEC), "exec")


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "exec.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
    """The store as the default executor (local, inline) writes it."""
    db = tmp_path_factory.mktemp("ref") / "store.duckdb"
    report = run_sweep(spec, db, device="cpu", workers=1)
    assert report.statuses["completed"] == 4
    return db


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    """Half the grid (width 16: 2 runs), its spec file and its inline store: for the executor that
    starts a process per attempt (submitit)."""
    text = HALF_SPEC
    path = tmp_path_factory.mktemp("half") / "half.toml"
    path.write_text(text)
    spec = parse_spec(tomllib.loads(text), "exec")
    db = path.parent / "ref" / "store.duckdb"
    assert run_sweep(spec, db, device="cpu", workers=1).statuses["completed"] == 2
    return spec, path, db


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster, its session files in a temporary directory removed afterwards."""
    if not _has("ray"):
        pytest.skip("ray is not installed (pip install 'ray>=2.9')")
    import ray

    home_ray = Path.home() / ".ray"
    had_home_ray = home_ray.exists()
    old_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # otherwise Ray 2.5x+ writes a token under ~/.ray
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    # the tests' fault hook (tests/faults.py) must import in Ray's workers too
    tests = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH"))
                                                                      if p)}})
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if not had_home_ray:
            shutil.rmtree(home_ray, ignore_errors=True)
        if old_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_auth


def assert_same_store(a: Path, b: Path, rel: float = 1e-6) -> None:
    """Equal row counts; sumsq and losses equal within `rel`, joined on the record keys."""
    assert counts(a) == counts(b)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
        con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
        on = " AND ".join(f"x.{k} = y.{k}" for k in KEYS)
        joined, bad = con.execute(f"""
            SELECT count(*), count(*) FILTER (WHERE abs(x.sumsq - y.sumsq) > {rel} * greatest(abs(x.sumsq), 1e-30)
                                             OR x.count != y.count)
            FROM a.probes x JOIN b.probes y ON {on}""").fetchone()
        assert joined == counts(a)["probes"] and bad == 0, (joined, bad)
        losses = con.execute(f"""
            SELECT count(*) FILTER (WHERE abs(x.train_loss - y.train_loss) > {rel} * abs(x.train_loss))
            FROM a.losses x JOIN b.losses y USING (run_id, step)""").fetchone()[0]
        assert losses == 0
        status = con.execute("SELECT count(*) FROM a.runs x JOIN b.runs y USING (run_id) "
                             "WHERE x.status = y.status").fetchone()[0]
        assert status == counts(a)["runs"]
    finally:
        con.close()


class Recorder:
    """The sweep progress protocol, recorded."""

    def __init__(self):
        self.steps: dict[str, int] = {}
        self.ended: dict[str, str] = {}

    def start(self, total): ...
    def begin_run(self, cfg): ...
    def step(self, run_id, step, total):
        self.steps[run_id] = step
    def end_run(self, run_id, status):
        self.ended[run_id] = status
    def stop(self): ...


def _faults(monkeypatch, spec, modes: list[str]) -> list[str]:
    ids = [cfg.run_id for cfg in spec.runs]
    faults.inject(monkeypatch, {rid: m for rid, m in zip(ids, modes, strict=False) if m})
    return ids


def test_local_worker_processes_match_inline_through_a_kill_and_raises(spec, reference, tmp_path, monkeypatch):
    """workers=2: spawned processes; a killed worker, a raising task and a raising run are retried."""
    ids = _faults(monkeypatch, spec, ["kill@1", "task-raise@1", "raise@1"])
    db = tmp_path / "store.duckdb"
    progress = Recorder()
    report = run_sweep(spec, db, device="cpu", workers=2, retries=1, progress=progress)
    assert report.executor == "local" and report.statuses == {"completed": 4} and report.retried == 3
    assert report.attempt_errors[ids[0]] == ["worker lost (local): worker process died (killed by SIGKILL)"]
    assert report.attempt_errors[ids[1]] == [f"worker lost (local): RuntimeError: injected test fault (task-raise) "
                                             f"in run {ids[1]}"]
    assert report.attempt_errors[ids[2]][0].startswith("RuntimeError: injected test fault (raise)")  # run_one's
    assert progress.steps == {cfg.run_id: 2 for cfg in spec.runs}  # steps travel back from the workers
    assert progress.ended == {cfg.run_id: "completed" for cfg in spec.runs}
    assert_same_store(db, reference)


@needs_ray
def test_ray_matches_local_and_resume_crosses_executors(spec, spec_file, reference, ray_cluster, tmp_path):
    db = tmp_path / "ray" / "store.duckdb"
    report = run_sweep(spec, db, executor=RayExecutor(num_cpus=1))
    assert report.executor == "ray" and report.statuses["completed"] == 4
    assert_same_store(db, reference)
    assert set(load_runs(db)["device"]) == {"cpu"}  # device "auto" resolved on the worker
    again = run_sweep(spec, db, device="cpu", workers=1)  # runs done by ray are skipped by local
    assert again.skipped == 4 and not again.statuses
    # local first (half the grid), then the CLI with --executor ray finishes the rest
    mixed = tmp_path / "mixed" / "store.duckdb"
    half = parse_spec(tomllib.loads(HALF_SPEC), "exec")
    run_sweep(half, mixed, device="cpu", workers=1)
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--executor", "ray", "--db", str(mixed)])
    assert result.exit_code == 0, result.output
    assert "2 completed, 0 diverged, 0 failed, 2 skipped" in result.output
    assert_same_store(mixed, reference)


@needs_ray
def test_ray_worker_killed_or_raising_is_failed_retried_and_sweep_completes(spec, reference, ray_cluster, tmp_path,
                                                                              monkeypatch):
    ids = _faults(monkeypatch, spec, ["kill@1", "raise@1", "task-raise"])
    db = tmp_path / "store.duckdb"
    report = run_sweep(spec, db, executor=RayExecutor(num_cpus=1), retries=1)
    assert report.statuses == {"completed": 3, "failed": 1} and report.retried == 3
    assert report.attempt_errors[ids[0]][0].startswith("worker lost (ray): WorkerCrashedError")
    assert report.attempt_errors[ids[1]][0].startswith("RuntimeError: injected test fault (raise)")  # run_one's
    lost = f"worker lost (ray): RuntimeError: injected test fault (task-raise) in run {ids[2]}"
    assert report.attempt_errors[ids[2]] == [lost, lost] and report.failures[ids[2]] == lost
    runs = load_runs(db)
    failed = runs.filter(runs["status"] == "failed")
    assert failed["run_id"].to_list() == [ids[2]] and "runs/sweeps/executors/" in failed["error"][0]  # the remote trace
    # rerun without faults on the local executor: only the failed run is redone, nothing lost or duplicated
    faults.clear(monkeypatch)
    resumed = run_sweep(spec, db, device="cpu", workers=1)
    assert resumed.skipped == 3 and resumed.statuses == {"completed": 1}
    assert_same_store(db, reference)


@needs_submitit
def test_submitit_local_matches_local_through_a_kill_and_a_raise(half, tmp_path, monkeypatch):
    """CLI --executor slurm --cluster local: submitit's LocalExecutor, one job per run (job arrays)."""
    spec, spec_file, reference = half
    ids = _faults(monkeypatch, spec, ["kill@1", "task-raise@1"])
    db = tmp_path / "store.duckdb"
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--executor", "slurm", "--cluster", "local",
                                      "--db", str(db), "--retries", "1", "--time-min", "5"])
    assert result.exit_code == 0, result.output
    assert "2 completed, 0 diverged, 0 failed, 0 skipped (already finished), 2 retried" in result.output, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert f"retried {ids[0]} after attempt 1: worker lost (slurm): job " in out and "ended without a result" in out
    assert f"retried {ids[1]} after attempt 1: worker lost (slurm): RuntimeError: injected test fault" in out
    assert_same_store(db, reference)
    logs = db.parent / "submitit"  # next to the shard directory, not in it
    assert len([p for p in logs.iterdir() if p.name != "%j"]) == 4  # 2 runs + 2 retries, one folder per job


@pytest.mark.parametrize(("executor", "package"), [("ray", "ray>=2.9"), ("slurm", "submitit>=1.5")])
def test_missing_package_is_one_line_exit_2(executor, package, spec_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray" if executor == "ray" else "submitit", None)  # import fails
    db = tmp_path / "store.duckdb"
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--executor", executor, "--db", str(db)])
    assert result.exit_code == 2
    assert f"pip install '{package}'" in result.output and result.output.strip().count("\n") == 0
    assert not db.exists()


def test_bad_executor_flags_are_one_line_exit_2(spec_file, tmp_path):
    for args in (["--executor", "dask"], ["--partition", "gpu"], ["--executor", "ray", "--workers", "2"],
                 ["--executor", "slurm", "--gpus-per-task", "0.5"]):
        result = CliRunner().invoke(app, ["sweep", str(spec_file), "--db", str(tmp_path / "x.duckdb"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
