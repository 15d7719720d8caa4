"""Sweeps: spec validation, end-to-end into DuckDB, resume, divergence, failures, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import numpy as np
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
        ("lrs = [0.01]", "lrs = [nan]", "grid.lrs[0]=nan; allowed: a finite number"),
        ("lrs = [0.01]", "lrs = [0.01, inf]", "grid.lrs[1]=inf; allowed: a finite number"),
        ("lrs = [0.01]", "lrs = [-0.01]", "grid.lrs[0]=-0.01; allowed: > 0"),
        ("batch = 2", "batch = 2\ndt_max = inf", "train.dt_max=inf"),
        ('presets = ["sp", "mup-ssm"]', 'presets = ["sp", "no-such-preset.toml"]', "grid.presets[1]"),
        ("batch = 2", "batch = 2\nparam_every = 0", "train.param_every=0; allowed: a positive integer"),
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
    wide = load_spec("paper-figure-wide")
    assert sorted({r.n_u for r in wide.runs}) == [32, 64, 128, 256, 512, 1024, 2048] and wide.n_runs == 7 * 3 * 2 * 2
    recipe = ("steps", "log_every", "batch", "seq_len", "task", "n_layers", "dt_min", "dt_max")
    assert {tuple(getattr(r, k) for k in recipe) for r in wide.runs} == {tuple(getattr(fig.runs[0], k) for k in recipe)}


def test_every_spec_key_is_documented():
    """docs/specs.md names every [grid] and [train] key the loader accepts."""
    from ssmscope.runs.sweeps import spec as spec_module

    text = (Path(__file__).resolve().parents[1] / "docs" / "specs.md").read_text()
    missing = [k for k in sorted(spec_module._GRID_KEYS | spec_module._RECIPE_KEYS) if f"`{k}`" not in text]
    assert not missing, f"docs/specs.md does not document {missing}"


def test_run_ids_are_stable_hashes_of_the_config():
    a = parse_spec(__import__("tomllib").loads(TINY), "a").runs
    b = parse_spec(__import__("tomllib").loads(TINY), "b").runs
    assert [r.run_id for r in a] == [r.run_id for r in b]
    assert len({r.run_id for r in a}) == len(a)


def test_param_every_thins_parameter_records_and_keeps_old_run_ids(tmp_path):
    """train.param_every = k: ‖W‖, ‖W − W₀‖ on logged steps 0, k, 2k, … only; every other record is the same.
    At its default (1) it stays out of the run id, so runs stored before it existed keep theirs."""
    import tomllib

    from ssmscope.runs.store.db import load_probe_frame
    from ssmscope.runs.sweeps.spec import HASH_OMITTED_DEFAULTS

    data = tomllib.loads(tiny_spec_toml(widths=(16,)))
    data["train"] |= {"steps": 4}
    plain = parse_spec(data, "every")
    data["train"]["param_every"] = 3
    thinned = parse_spec(data, "every")
    assert [r.param_every for r in plain.runs] == [1, 1] and HASH_OMITTED_DEFAULTS["param_every"] == 1
    assert {r.run_id for r in plain.runs}.isdisjoint(r.run_id for r in thinned.runs)
    frames = {}
    for name, spec in (("plain", plain), ("thinned", thinned)):
        db = tmp_path / f"{name}.duckdb"
        run_sweep(spec, db, device="cpu", workers=1)
        frames[name] = load_probe_frame(db, {"preset": "sp"})
    params = {k: sorted(f.filter(f["site"] == "param")["step"].unique().to_list()) for k, f in frames.items()}
    assert params == {"plain": [0, 1, 2, 3, 4], "thinned": [0, 3]}
    others = {k: f.filter(f["site"] != "param").drop("run_id").sort("step", "layer", "site", "quantity", "group")
              for k, f in frames.items()}
    keys = ("step", "layer", "site", "quantity", "group")
    assert others["plain"].select(keys).equals(others["thinned"].select(keys))
    # and the training is the same: thinning the records does not touch what they record
    np.testing.assert_allclose(others["thinned"]["sumsq"].to_numpy(), others["plain"]["sumsq"].to_numpy(), rtol=1e-6)


def test_sweep_fills_the_store_and_resume_skips_finished_runs(tmp_path):
    db = tmp_path / "store.duckdb"
    spec = load_spec(_spec(tmp_path))
    first = run_sweep(spec, db, device="cpu", workers=1)
    assert first.statuses["completed"] == 4 and first.skipped == 0
    n = counts(db)
    assert n["runs"] == 4 and n["losses"] == 4 * 3
    # per run, at each of 3 logged steps (0, 1, 2): per layer (2) the activations y, cx, block_out × (value,
    # delta_init, delta_prev), x × (value, delta_init) (Δx against the previous step is off by default) and the
    # adjoints grad_y, grad_x (value) = 13 records; and per parameter tensor (12 per layer, the embedding and the
    # final norm: 26, the readout tied to the embedding) its value and delta_init
    per_run = 3 * (2 * (3 * 3 + 2 + 2) + 26 * 2)
    assert per_run == 234 and n["probes"] == 4 * per_run
    again = run_sweep(spec, db, device="cpu", workers=1)
    assert again.skipped == 4 and sum(again.statuses.values()) == 0
    assert counts(db) == n  # idempotent ingest: nothing duplicated


def test_diverging_run_is_recorded_and_sweep_completes(tmp_path):
    text = TINY.replace("lrs = [0.01]", "lrs = [0.01, 1e6]").replace('optimizers = ["adam"]', 'optimizers = ["sgd"]')
    text = text.replace("steps = 2", "steps = 6")
    db = tmp_path / "store.duckdb"
    report = run_sweep(load_spec(_spec(tmp_path, text)), db, device="cpu")
    runs = load_runs(db)
    # SGD at lr 1e6 blows up in the first update, whatever the preset and width; at 0.01 nothing does
    assert report.statuses == {"completed": 4, "diverged": 4} and len(runs) == 8
    diverged = runs.filter(runs["status"] == "diverged")
    assert sorted(diverged["lr"].to_list()) == [1e6] * 4
    assert diverged["last_finite_step"].to_list() == [0] * 4  # step 0 is finite; step 1's loss is not


def test_failing_run_is_marked_failed_with_its_error(tmp_path, monkeypatch):
    spec = load_spec(_spec(tmp_path))
    sp_runs = [cfg.run_id for cfg in spec.runs if cfg.preset == "sp"]
    faults.inject(monkeypatch, dict.fromkeys(sp_runs, "raise"))
    db = tmp_path / "store.duckdb"
    report = run_sweep(spec, db, device="cpu", retries=1)
    assert report.statuses["failed"] == 2 and report.statuses["completed"] == 2 and report.retried == 2
    assert sorted(report.failures) == sorted(sp_runs)
    assert all(err.startswith("RuntimeError: injected test fault (raise)") for err in report.failures.values())
    runs = load_runs(db)
    assert set(runs["status"]) == {"completed", "failed"}


def _one_line_exit_2(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
    return result.output


def test_a_broken_preset_file_is_rejected_before_any_run(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[preset]\nname = 'broken'\n")  # no [roles]
    spec = _spec(tmp_path, TINY.replace('presets = ["sp", "mup-ssm"]', f'presets = ["sp", "{bad}"]'))
    db = tmp_path / "store" / "x.duckdb"
    assert "missing table [roles]" in _one_line_exit_2(["sweep", str(spec), "--db", str(db)])
    assert not db.parent.exists()  # nothing ran, nothing was created


def test_widths_beyond_this_machines_memory_are_one_line_with_estimate_and_limit(tmp_path):
    huge = _spec(tmp_path, TINY.replace("widths = [16, 32]", "widths = [1000000000]"))
    db = tmp_path / "store" / "x.duckdb"
    out = " ".join(_one_line_exit_2(["sweep", str(huge), "--db", str(db)]).split())
    assert "N_u=1000000000" in out and "needs about" in out and "EiB" in out and "MemAvailable" in out
    assert "--max-memory" in out and not db.parent.exists()
    tiny = _spec(tmp_path)
    out = " ".join(_one_line_exit_2(["sweep", str(tiny), "--db", str(db), "--max-memory", "1M"]).split())
    assert "more than the 1 MiB a run may use (--max-memory)" in out
    assert "allowed: auto, none" in _one_line_exit_2(["sweep", str(tiny), "--db", str(db), "--max-memory", "lots"])


def test_the_memory_estimate_grows_with_width_and_fits_the_builtin_cpu_specs():
    from ssmscope.runs.sweeps.memory import run_bytes

    widths = [run_bytes(cfg) for cfg in sorted(load_spec("paper-figure").runs, key=lambda c: c.n_u)]
    assert widths == sorted(widths) and widths[-1] > widths[0]
    assert max(widths) < 4 * 2**30  # the CPU paper figure needs well under the 24 GiB of these machines
    assert max(run_bytes(cfg) for cfg in load_spec("paper-figure-gpu").runs) < 40 * 2**30  # fits an H100


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_rejected_before_any_run(tmp_path):
    db = tmp_path / "store" / "x.duckdb"
    out = _one_line_exit_2(["sweep", str(_spec(tmp_path)), "--db", str(db), "--device", "cuda"])
    assert "no CUDA device is visible here" in out and not db.parent.exists()


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(TINY.replace('name = "tiny"', 'name = "café"').encode("latin-1"))
    out = _one_line_exit_2(["sweep", str(path), "--db", str(tmp_path / "x.duckdb")])
    assert "not UTF-8" in out and "0xe9" in out


def test_ingest_into_a_missing_folder_is_an_error_not_an_empty_store(tmp_path):
    db = tmp_path / "nowhere" / "store.duckdb"
    assert "does not exist" in _one_line_exit_2(["ingest", "--db", str(db)])
    assert "no shard folder" in _one_line_exit_2(["ingest", "--db", str(tmp_path / "x.duckdb"), "--shards",
                                                  str(tmp_path / "missing")])
    assert not db.parent.exists() and not (tmp_path / "x.duckdb").exists()


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
