"""The library: a cheap `import ssmscope`, coord_check = a sweep's records, save/load through the store,
the figure and the fits on its frame, and Monitor in a user's own loop."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch

import ssmscope
from ssmscope.recipe import Grid, Training
from ssmscope.records import FRAME_SCHEMA
from ssmscope.runs.store.db import StoreError, connect, ingest, load_losses, load_probe_frame, load_runs
from ssmscope.runs.store.layout import shard_dir_for
from ssmscope.runs.store.schema import PROBE_FRAME_COLUMNS
from ssmscope.runs.sweeps import corpus
from ssmscope.runs.sweeps.spec import RunConfig
from ssmscope.runs.sweeps.worker import run_one
from ssmscope.ssm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["run_id", "step", "layer", "site", "quantity", "group"]


SP = Grid(presets="sp")
SP_ZOH = Grid(presets="sp", discretizations="zoh")
ONE_STEP = Training(steps=1)
GRID_KEYS = {"presets", "discretizations", "optimizer", "lrs", "seeds"}
TRAINING_KEYS = {"steps", "log_every", "weight_decay", "grads", "state_prev", "scan", "dtype", "eval_every",
                 "group_probes"}


def check(make_model, widths, batches, **kwargs):
    """coord_check with the grid's and training's fields given as keywords (the refusal tables below list one bad
    value each, wherever it belongs): each part is made — and checked — as a user makes it."""
    grid = Grid(**{k: kwargs.pop(k) for k in GRID_KEYS & set(kwargs)})
    training = Training(**{k: kwargs.pop(k) for k in TRAINING_KEYS & set(kwargs)})
    return ssmscope.coord_check(make_model, widths, batches, grid, training, **kwargs)


def tiny(**kw) -> ssmscope.MambaConfig:
    return ssmscope.MambaConfig(n_layers=kw.pop("n_layers", 2), **kw)


def initialised(cfg: ssmscope.MambaConfig, preset: str = "sp") -> ssmscope.MambaLM:
    """A MambaLM initialised by a preset (a bare MambaLM's A_log and D are uninitialised memory)."""
    from ssmscope.ssm import apply_preset, load_preset

    torch.manual_seed(0)
    model = ssmscope.MambaLM(cfg)
    apply_preset(model, cfg, load_preset(preset), "sgd", 0.1)
    return model


def batch(seed: int = 0, size: int = 2, length: int = 8) -> torch.Tensor:
    return corpus.batch("pydoc", "train", size, length, seed)


# ----------------------------------------------------------------------------- import ssmscope
def test_import_ssmscope_is_cheap_and_loads_nothing_heavy(tmp_path):
    code = ("import sys, time\nt = time.perf_counter()\nimport ssmscope\nt = time.perf_counter() - t\n"
            "heavy = [m for m in ('torch', 'polars', 'duckdb', 'streamlit', 'plotly', 'pyarrow', 'transformers') "
            "if m in sys.modules]\nprint(t, heavy)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    seconds, heavy = done.stdout.split(" ", 1)
    assert heavy.strip() == "[]"
    assert float(seconds) < 1.0 and wall < 5.0  # the import itself; the interpreter's start on a busy machine


def test_every_public_name_resolves():
    for name in ssmscope.__all__:
        assert getattr(ssmscope, name) is not None, name
    assert set(ssmscope.__all__) <= set(dir(ssmscope))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ssmscope.nope  # noqa: B018


# ----------------------------------------------------------------------------- coord_check = a sweep
@pytest.mark.parametrize("fixed", [True, False])
def test_coord_check_on_ssmscopes_model_returns_the_records_of_a_one_run_sweep(tmp_path, fixed):
    cfg = RunConfig(preset="sp", discretization="zoh", optimizer="adam", lr=0.01, seed=0, n_u=16, n_x=16,
                    n_layers=2, steps=3, log_every=2, batch=2, seq_len=8, fixed_batch=fixed,
                    base="mamba")  # sp's own base, as a spec expands it (a bare RunConfig keeps the legacy one)
    assert run_one(cfg, tmp_path / "shards", spec="one-run") == "completed"
    ingest(tmp_path / "s.duckdb", tmp_path / "shards")
    swept = load_probe_frame(tmp_path / "s.duckdb")
    if fixed:
        batches = batch(0)
    else:  # the worker's stream of training batches, and its probe batch
        batches = [corpus.batch("pydoc", "train", 2, 8, corpus.train_batch_seed(0, s)) for s in range(4)]
    frame = ssmscope.coord_check(tiny(), [16], batches, Grid(presets="sp", discretizations="zoh", optimizer="adam",
                                                             lrs=0.01, seeds=[0]),
                                 Training(steps=3, log_every=2), probe_batch=None if fixed else batch(0))
    assert frame.columns == list(swept.columns) and frame.schema == swept.schema
    assert sorted(frame["step"].unique().to_list()) == [0, 2, 3]
    ours = frame.drop("run_id", "spec", "task").sort(KEYS[1:])
    theirs = swept.drop("run_id", "spec", "task").sort(KEYS[1:])
    assert ours.height == theirs.height > 100
    assert ours.equals(theirs)  # the same numbers, bit for bit (same seeds, same order of operations)
    # and the number both paths share is the one a model built by hand gives: step 0's loss before any update
    torch.manual_seed(0)
    model = ssmscope.MambaLM(tiny(d_model=8, d_state=16, discretization="zoh"))
    from ssmscope.ssm import apply_preset, load_preset

    apply_preset(model, model.cfg, load_preset("sp"), "adam", 0.01, seed=0)
    with torch.no_grad():
        ids = batch(0) if fixed else batches[0]  # step 0 trains on the fixed batch, or on the stream's first
        want = torch.nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 256), ids[:, 1:].reshape(-1)).item()
    assert load_losses(tmp_path / "s.duckdb").sort("step")["train_loss"][0] == pytest.approx(want, rel=1e-6)


def test_coord_check_with_eval_loss_and_group_probes_is_the_same_run_as_a_sweeps(tmp_path):
    """The one loop gives coord_check the worker's held-out loss and per-group update probes: the same records and
    the same losses, bit for bit, as a one-run sweep with eval_every and group_probes."""
    cfg = RunConfig(preset="sp", discretization="zoh", optimizer="adam", lr=0.01, seed=0, n_u=16, n_x=16,
                    n_layers=1, steps=2, log_every=1, batch=2, seq_len=8, eval_every=2, eval_batches=2,
                    group_probes=True, base="mamba")
    assert run_one(cfg, tmp_path / "shards", spec="one-run") == "completed"
    ingest(tmp_path / "s.duckdb", tmp_path / "shards")
    swept, swept_losses = load_probe_frame(tmp_path / "s.duckdb"), load_losses(tmp_path / "s.duckdb")
    held_out = [corpus.batch("pydoc", "held_out", 2, 8, corpus.eval_batch_seed(0, i)) for i in range(2)]
    frame, made = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP_ZOH,
                                       Training(steps=2, eval_every=2, group_probes=True), eval_batches=held_out,
                                       return_runs=True)
    groups = set(frame.filter(pl.col("site") == "x")["group"].unique().to_list()) - {""}
    assert groups and frame.filter(pl.col("group").is_in(list(groups)))["step"].min() == 1  # after the first step
    ours = frame.drop("run_id", "spec", "task").sort(KEYS[1:])
    assert ours.equals(swept.drop("run_id", "spec", "task").sort(KEYS[1:]))
    (data,) = made.values()
    assert [r["eval_loss"] is not None for r in data.losses] == [True, False, True]  # steps 0 and 2
    assert [r["eval_loss"] for r in data.losses] == swept_losses.sort("step")["eval_loss"].to_list()
    assert [r["train_loss"] for r in data.losses] == swept_losses.sort("step")["train_loss"].to_list()


def test_coord_check_fits_and_figure_work_on_its_frame_and_it_saves_into_the_store(tmp_path):
    frame, made = ssmscope.coord_check(tiny(n_layers=1), [8, 16, 32], batch(0),
                                       Grid(presets=["sp", "mup-ssm"], discretizations="zoh", optimizer="sgd",
                                            lrs=0.05, seeds=[0, 1]), Training(steps=2),
                                       conventions=["rms", "l2"], name="lib-test", return_runs=True)
    assert frame.select("preset", "seed", "n_u").unique().height == 2 * 2 * 3
    assert all(c in frame.columns for c in PROBE_FRAME_COLUMNS) and {"norm_rms", "norm_l2"} <= set(frame.columns)
    # the norms of y at step 0, derived here from a model built by hand with the same seed and preset: the S6 output
    # read off the mixer's ssm_output on the probe batch, before any update
    from dataclasses import replace

    from ssmscope.ssm import apply_preset, load_preset

    torch.manual_seed(0)
    cfg = replace(tiny(n_layers=1), d_model=4, d_state=8, discretization="zoh")
    model = ssmscope.MambaLM(cfg)
    apply_preset(model, cfg, load_preset("sp"), "sgd", 0.05, seed=0)
    seen = []
    model.layers[0].mixer.ssm_output.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        model(batch(0)[:, :-1])
    (y,) = seen
    row = frame.filter((pl.col("preset") == "sp") & (pl.col("seed") == 0) & (pl.col("n_u") == 8)
                       & (pl.col("step") == 0) & (pl.col("site") == "y") & (pl.col("quantity") == "value")
                       & (pl.col("group") == "") & (pl.col("layer") == 0)).row(0, named=True)
    assert row["count"] == y.numel() == 2 * 8 * 8  # batch 2 × length 8 × N_u 8
    assert row["norm_rms"] == pytest.approx(float(y.pow(2).mean().sqrt()), rel=1e-5)
    assert row["norm_l2"] == pytest.approx(float(y.norm()), rel=1e-5)

    slopes = ssmscope.fit_slopes(frame, step="last", n_boot=20)
    x = slopes.filter((pl.col("site") == "x") & (pl.col("quantity") == "value") & (pl.col("group") == ""))
    assert set(x["preset"]) == {"sp", "mup-ssm"} and (x["status"] == "ok").all() and (x["n_seeds"] == 2).all()
    assert x["estimate"].is_finite().all()

    fig = ssmscope.coord_figure(frame, rows=("x", "dy"), n_boot=0)
    assert fig.layout.meta["kind"] == "coord_check" and fig.layout.meta["panels"] == ["sp", "mup-ssm"]
    assert fig.layout.meta["step"] == 2 and fig.layout.meta["rows"] == ["x", "dy"]
    means = [t for t in fig.data if (t.meta or {}).get("kind") == "mean"]
    assert len(means) == 2 * 2  # (sp, mup-ssm) × (x, Δy), one layer

    db = tmp_path / "store.duckdb"
    report = ssmscope.store.save(frame, db, runs=made)
    assert len(report.loaded) == 12
    back = ssmscope.store.load(db, spec="lib-test")
    assert back.sort(KEYS).equals(frame.drop("norm_rms", "norm_l2").sort(KEYS))
    runs = load_runs(db)
    assert runs.height == 12 and set(runs["status"]) == {"completed"} and (runs["n_layers"] == 1).all()
    assert (runs["batch"] == 2).all() and (runs["seq_len"] == 8).all() and (runs["fixed_batch"]).all()
    con = connect(db, read_only=True)
    config = json.loads(con.execute("SELECT config_json FROM runs LIMIT 1").fetchone()[0])
    con.close()
    assert config["family"]["model"] == "ssmscope.MambaLM" and config["steps"] == 2
    assert load_losses(db).height == 12 * 3  # steps 0, 1, 2 of every run
    assert ssmscope.store.save(frame, db, runs=made).skipped == 12  # idempotent, like `ssmscope ingest`

    done = subprocess.run([str(Path(sys.executable).with_name("ssmscope")), "slopes", "--db", str(db), "--format",
                           "csv", "--where", "preset=mup-ssm"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mup-ssm" in done.stdout and "sp," not in done.stdout


def test_a_diverging_run_keeps_its_records_up_to_the_divergence():
    frame, made = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0),
                                       Grid(presets="sp", discretizations="zoh", optimizer="sgd", lrs=1e4),
                                       Training(steps=4), return_runs=True)
    (run_id,) = frame["run_id"].unique().to_list()
    assert set(frame["status"]) == {"diverged"}
    assert sorted(frame["step"].unique().to_list()) == [0, 1]  # step 1 went non-finite: stopped there
    step0 = frame.filter(pl.col("step") == 0)
    assert step0["sumsq"].is_finite().all() and step0.height > 30
    assert made[run_id].row["last_finite_step"] == 0 and len(made[run_id].losses) == 2


def test_a_frame_from_elsewhere_saves_with_the_keys_it_carries(tmp_path):
    frame = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP_ZOH, ONE_STEP)
    path = tmp_path / "frame.parquet"
    frame.write_parquet(path)
    reread = pl.read_parquet(path).with_columns(pl.lit("from-file").alias("run_id"))
    ssmscope.store.save(reread, tmp_path / "s.duckdb")
    runs = load_runs(tmp_path / "s.duckdb")
    assert runs["run_id"].to_list() == ["from-file"] and runs["last_finite_step"].to_list() == [1]
    assert runs["preset"].to_list() == ["sp"] and load_losses(tmp_path / "s.duckdb").height == 0
    assert runs["init_base"].to_list() == frame["init_base"].unique().to_list() == ["mamba"]  # sp's own base


def test_the_same_frame_saves_identically_whatever_ran_before_in_the_process(tmp_path):
    """No process-global state: a frame saved without `runs` gets rows from its keys alone, before and after the
    same runs were made again in this process (which once changed what save wrote); with `runs` it gets theirs."""
    frame = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP_ZOH, ONE_STEP)
    ssmscope.store.save(frame, tmp_path / "before.duckdb")
    again, made = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP_ZOH, ONE_STEP, return_runs=True)
    assert again["run_id"].to_list() == frame["run_id"].to_list()  # the same run, made again
    ssmscope.store.save(frame, tmp_path / "after.duckdb")
    before, after = load_runs(tmp_path / "before.duckdb"), load_runs(tmp_path / "after.duckdb")
    assert before.equals(after)
    assert before["started_at"].to_list() == [""] and before["init_base"].to_list() == ["mamba"]
    assert load_losses(tmp_path / "after.duckdb").height == 0
    ssmscope.store.save(frame, tmp_path / "full.duckdb", runs=made)
    full = load_runs(tmp_path / "full.duckdb")
    assert full["started_at"].to_list() == [made.rows[0]["started_at"]] != [""]
    assert load_losses(tmp_path / "full.duckdb")["step"].to_list() == [0, 1]
    with pytest.raises(ConfigError, match="runs=list"):
        ssmscope.store.save(frame, tmp_path / "x.duckdb", runs=[made])


def test_a_shard_that_cannot_be_written_is_a_store_error_naming_the_folder(tmp_path):
    frame = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP_ZOH, ONE_STEP)
    blocked = tmp_path / "shards"
    blocked.write_text("a file where the shard folder should be")
    with pytest.raises(StoreError, match=r"cannot write the shard .* under .*shards"):
        ssmscope.store.save(frame, tmp_path / "s.duckdb", shards=blocked)


@pytest.mark.parametrize("kwargs,match", [
    ({"widths": 16}, "widths=16"),
    ({"widths": [16, (32,)]}, r"widths: \(32,\)"),
    ({"widths": [16, 16]}, "repeats"),
    ({"presets": "nope"}, "nope"),
    ({"optimizer": "lion"}, "optimizer='lion'; allowed: sgd, adam, adamw"),
    ({"lrs": -1.0}, "lrs=-1.0"),
    ({"steps": 0}, "steps=0"),
    ({"seeds": []}, "seeds=\\[\\]"),
    ({"discretizations": "rk4"}, "discretization='rk4'"),
    ({"scan": "cuda"}, "scan='cuda'"),
    ({"conventions": ["l3"]}, "convention='l3'"),
    ({"batches": "text"}, "batches"),
    ({"batches": torch.zeros(3, dtype=torch.long)}, r"shape \(batch, length \+ 1\)"),
    ({"make_model": 3}, "make_model=int"),
    ({"widths": [15]}, "multiple of expand"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1"),
    ({"grads": 1}, "grads=1; allowed: True or False"),
    ({"eval_every": 2}, "eval_batches=None with training.eval_every=2"),
    ({"eval_batches": [batch(1)]}, "eval_batches=given with training.eval_every=0"),
    ({"eval_every": 1, "eval_batches": batch(1)}, "eval_batches: a non-empty list"),
    ({"group_probes": True, "loss": lambda model, b: model(b[:, :-1]).mean()}, "group_probes=True needs the default"),
    ({"presets": [3]}, "presets: 3; allowed: a name"),
])
def test_a_mistake_is_one_config_error_naming_it(kwargs, match):
    args = {"make_model": tiny(n_layers=1), "widths": [16], "batches": batch(0), "steps": 1, "presets": "sp"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        check(args.pop("make_model"), args.pop("widths"), args.pop("batches"), **args)


class NotAFactory:
    """A class whose constructor takes no widths: calling it as make_model(n_u, n_x) is a TypeError."""

    def __init__(self) -> None:
        pass


def _ids(*shape: int, value: int | None = None, dtype: torch.dtype = torch.long) -> torch.Tensor:
    t = torch.zeros(*shape, dtype=torch.long) if value is None else torch.full(shape, value, dtype=torch.long)
    return t.to(dtype)


@pytest.mark.parametrize(("kwargs", "match"), [
    # the model family
    ({"make_model": torch.nn.Linear(4, 4)}, r"make_model is a model \(torch\.nn\.modules\.linear\.Linear\), not a "
     r"model family.*ssmscope MambaConfig.*transformers MambaConfig.*HFMamba"),
    ({"make_model": "mamba"}, "make_model=str; allowed: an ssmscope MambaConfig"),
    ({"make_model": NotAFactory}, r"make_model\(16, 16\) raised TypeError: .*make_model must be an ssmscope "
     "MambaConfig"),
    # batches
    ({"batches": _ids(0, 9)}, r"batches is empty \(shape \(0, 9\)\)"),
    ({"batches": [batch(0), _ids(0, 9)]}, r"batches\[1\] is empty"),
    ({"batches": [batch(0)], "probe_batch": _ids(0, 9)}, r"probe_batch is empty"),
    ({"batches": _ids(2, 9, value=300)}, r"token id 300, but the model's vocab_size is 256 \(ids 0 … 255\)"),
    ({"batches": [batch(0), _ids(2, 9, value=256)]}, r"batches\[1\] holds token id 256, but the model's vocab_size"),
    ({"batches": _ids(2, 9, value=-1)}, r"token id -1; ids are in \[0, vocab_size\)"),
    ({"batches": _ids(2, 9, dtype=torch.float32)}, "dtype torch.float32; token ids are integers"),
    ({"batches": [[1, 2, 3]]}, r"batches\[0\]: a list; the default loss takes token ids"),
    # learning rates
    ({"lrs": math.inf}, "lrs=inf; allowed: a positive finite number"),
    ({"lrs": math.nan}, "lrs=nan"),
    ({"lrs": []}, r"lrs=\[\]; allowed"),
    ({"lrs": "0.01"}, "lrs='0.01' is a str; allowed: a positive finite number"),
    ({"lrs": True}, "lrs=True is a bool"),
    ({"lrs": [0.01, "0.1"]}, "lrs='0.1'; allowed"),
    ({"lrs": [0.01, 0.01]}, "repeats a learning rate"),
    # seeds
    ({"seeds": [2**70]}, r"seeds: 1180591620717411303424; allowed: a non-empty list of distinct ints in "
     r"\[0, 2\*\*63 - 1\]"),
    ({"seeds": [-1]}, "seeds: -1; allowed"),
    ({"seeds": 5}, "seeds=5; allowed: a non-empty list"),
    ({"seeds": "0"}, "seeds='0'; allowed"),
    ({"seeds": [0, 0]}, "repeats a seed"),
    ({"seeds": [0.5]}, "seeds: 0.5"),
    # steps
    ({"steps": 10**7}, "steps=10000000; allowed: a positive int up to 1,000,000"),
    ({"steps": 2.0}, "steps=2.0; allowed: a positive int"),
    ({"steps": True}, "steps=True"),
    ({"log_every": 0}, "log_every=0"),
    # memory, before anything is built or trained
    ({"widths": [2**20]}, r"widths: N_u=1048576, N_x=1048576 \(batch 2, length 8, 1 layer\) needs about .* more than "
     r"the .* available \((MemAvailable|physical memory).*max_memory=SIZE"),
    ({"max_memory": "1M"}, r"needs about .* more than the 1 MiB available \(max_memory\)"),
    ({"max_memory": "lots"}, "max_memory='lots'; allowed: 'auto', None"),
    ({"max_memory": -5}, "max_memory=-5"),
])
def test_coord_check_refuses_what_would_fail_inside_torch_in_one_line(kwargs, match):
    """Each of these used to reach torch (a TypeError from a module's forward, `max()` of an empty batch, an index
    out of range, torch.manual_seed's ValueError) or was accepted (lr inf or [], '0.01' read as '0')."""
    args = {"make_model": tiny(n_layers=1), "widths": [16], "batches": batch(0), "steps": 1, "presets": "sp"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match) as caught:
        check(args.pop("make_model"), args.pop("widths"), args.pop("batches"), **args)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 500


def test_the_recipe_must_be_its_objects():
    with pytest.raises(ConfigError, match=r"grid=dict; allowed: ssmscope.recipe.Grid"):
        ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), {"presets": "sp"})
    with pytest.raises(ConfigError, match=r"training=Grid; allowed: ssmscope.recipe.Training"):
        ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP, SP)
    with pytest.raises(ConfigError, match=r"labels=dict; allowed: ssmscope.recipe.Labels"):
        ssmscope.Monitor(initialised(tiny(n_layers=1)), None, probe_batch=batch(0), labels={"name": "x"})
    with pytest.raises(ConfigError, match="seed=-1"):
        ssmscope.Labels(seed=-1)
    assert Grid(presets="sp", lrs=0.01, seeds=range(2)) == Grid(presets=["sp"], lrs=[0.01], seeds=[0, 1])


def test_coord_check_names_the_config_to_pass_instead_of_a_built_model():
    model = initialised(tiny(n_layers=1))
    with pytest.raises(ConfigError, match=r"ssmscope\.ssm\.model\.MambaLM\), not a model family.*model\.cfg"):
        ssmscope.coord_check(model, [16], batch(0), SP, ONE_STEP)


def test_coord_check_checks_token_ids_against_the_callables_model_and_takes_memory_overrides():
    def make(n_u: int, n_x: int) -> ssmscope.MambaLM:
        return ssmscope.MambaLM(tiny(n_layers=1, d_model=n_u // 2, d_state=n_x, vocab_size=64))

    with pytest.raises(ConfigError, match="token id 100, but the model's vocab_size is 64"):
        ssmscope.coord_check(make, [16], _ids(2, 9, value=100), SP, ONE_STEP)
    frame = ssmscope.coord_check(make, [16], _ids(2, 9, value=63), SP, ONE_STEP, max_memory=None)
    assert not frame.is_empty()
    assert not ssmscope.coord_check(make, [16], _ids(2, 9, value=63), SP, ONE_STEP,
                                    max_memory="64G").is_empty()


def test_seeds_and_lrs_may_be_numpy_values():
    np = pytest.importorskip("numpy")
    frame = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), Grid(presets="sp", seeds=np.arange(2),
                                                                        lrs=np.float32(0.01)), ONE_STEP)
    assert sorted(frame["seed"].unique()) == [0, 1] and frame["lr"].unique().to_list() == [pytest.approx(0.01)]


# ----------------------------------------------------------------------------- the scan a run records
def test_every_run_row_records_the_scan_that_ran_not_auto(tmp_path):
    """A sweep, coord_check and Monitor with scan=auto on the CPU store `compiled` (or `fast` where the C scan
    does not build): the backend dispatch resolved auto to, which is what computed the runs."""
    import tomllib

    from conftest import tiny_spec_toml

    from ssmscope.runs.sweeps.spec import parse_spec
    from ssmscope.runs.sweeps.sweep import run_sweep
    from ssmscope.ssm.scan import resolve_backend

    ran = resolve_backend("auto", torch.device("cpu")).value
    assert ran in ("compiled", "fast")
    db = tmp_path / "sweep" / "s.duckdb"
    spec = parse_spec(tomllib.loads(tiny_spec_toml("scan-record", widths=(16,))), "scan-record")
    run_sweep(spec, db, device="cpu", workers=1, scan="auto")
    assert load_runs(db)["scan"].to_list() == [ran, ran]
    _, made = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP, Training(steps=1, scan="auto"),
                                   return_runs=True)
    assert made.rows[0]["scan"] == ran
    with ssmscope.Monitor(initialised(tiny(n_layers=1)), tmp_path / "m.duckdb", probe_batch=batch(0), every=1,
                          ingest=False) as mon:
        assert mon.run_row()["scan"] == ran
    _, explicit = ssmscope.coord_check(tiny(n_layers=1), [16], batch(0), SP, Training(steps=1, scan="reference"),
                                       return_runs=True)
    assert explicit.rows[0]["scan"] == "reference"


def test_a_worker_without_a_c_compiler_records_the_fast_scan(tmp_path, monkeypatch):
    from ssmscope.ssm.scan import compiled, dispatch

    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "empty-cache"))  # nothing built: a build is needed
    monkeypatch.setenv(compiled.CC_ENV, "/nonexistent/cc-for-ssmscope-tests")
    monkeypatch.setattr(dispatch, "_announced", set())
    monkeypatch.setattr(dispatch, "_BACKENDS", {})
    compiled.reset()
    try:
        cfg = RunConfig(preset="sp", discretization="zoh", optimizer="adam", lr=0.01, seed=0, n_u=16, n_x=16,
                        n_layers=1, steps=1, batch=2, seq_len=8)
        assert run_one(cfg, tmp_path / "shards", spec="no-cc", scan="auto") == "completed"
        ingest(tmp_path / "s.duckdb", tmp_path / "shards")
        assert load_runs(tmp_path / "s.duckdb")["scan"].to_list() == ["fast"]
    finally:
        compiled.reset()


# ----------------------------------------------------------------------------- Monitor
def test_monitor_logs_every_k_steps_into_shards_the_store_ingests_while_training(tmp_path):
    model = initialised(tiny(d_model=8))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    db = tmp_path / "live.duckdb"
    seen_while_training = []
    with ssmscope.Monitor(model, db, probe_batch=batch(0), every=10,
                          labels=ssmscope.Labels(name="live", preset="sp", optimizer="adam", lr=0.01)) as mon:
        for step in range(30):
            mon.step(step)
            if step == 10:  # the store already holds the run, marked running, with steps 0 and 10
                runs = load_runs(db)
                seen_while_training.append((runs["status"].to_list(), sorted(
                    load_probe_frame(db)["step"].unique().to_list())))
            ids = corpus.batch("pydoc", "train", 2, 8, corpus.train_batch_seed(0, step))
            loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 256), ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log_loss(step, loss)
    assert seen_while_training == [(["running"], [0, 10])]
    ingest(db)  # what `ssmscope ingest` does: nothing new, the monitor ingested its last flush itself
    runs = load_runs(db)
    assert runs["status"].to_list() == ["completed"] and runs["spec"].to_list() == ["live"]
    assert runs["last_finite_step"].to_list() == [20] and runs["n_u"].to_list() == [16]
    frame = load_probe_frame(db)
    assert sorted(frame["step"].unique().to_list()) == [0, 10, 20]
    assert frame.filter((pl.col("site") == "x") & (pl.col("quantity") == "delta_init") & (pl.col("step") == 20)
                        )["sumsq"].min() > 0  # the weights moved: Δx against step 0 is not zero
    assert load_losses(db)["step"].to_list() == list(range(30))


def test_monitor_probing_leaves_the_users_gradients_untouched(tmp_path):
    model = initialised(tiny(d_model=8))
    ids = batch(3)
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 256), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    with ssmscope.Monitor(model, tmp_path / "g.duckdb", probe_batch=batch(0), every=1, ingest=False) as mon:
        records = mon.step(0)
    assert any(r["site"] == "grad_x" for r in records)  # the probe pass did backpropagate
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())


def test_a_run_that_raises_is_stored_as_failed_with_its_records_and_error(tmp_path):
    model = initialised(tiny(d_model=8, n_layers=1))
    db = tmp_path / "f.duckdb"
    with pytest.raises(RuntimeError, match="simulated"):
        with ssmscope.Monitor(model, db, probe_batch=batch(0), every=2, flush_every=10) as mon:
            for step in range(5):
                mon.step(step)
                if step == 4:
                    raise RuntimeError("simulated failure in the user's loop")
    runs = load_runs(db)
    assert runs["status"].to_list() == ["failed"] and runs["last_finite_step"].to_list() == [4]
    con = connect(db, read_only=True)
    error = con.execute("SELECT error FROM runs").fetchone()[0]
    con.close()
    assert error.startswith("RuntimeError: simulated failure")
    assert sorted(load_probe_frame(db)["step"].unique().to_list()) == [0, 2, 4]


def test_monitor_waits_for_a_store_locked_by_another_writer_and_keeps_the_shard(tmp_path):
    model = initialised(tiny(d_model=8, n_layers=1))
    db = tmp_path / "locked.duckdb"
    code = ("import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\nprint('locked', flush=True)\n"
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with ssmscope.Monitor(model, db, probe_batch=batch(0), every=1) as mon:
            mon.step(0)
        assert (shard_dir_for(db) / mon.run_id / "probes.parquet").exists()  # the store's own shard folder
    finally:
        holder.kill()
        holder.wait()
    assert len(ingest(db).loaded) == 1  # once the writer is gone, `ssmscope ingest` loads what the monitor kept
    assert load_runs(db)["status"].to_list() == ["completed"]


def test_a_shard_folder_that_cannot_be_written_does_not_stop_training_and_is_reported_at_the_end(tmp_path, caplog):
    model = initialised(tiny(d_model=8, n_layers=1))
    blocked = tmp_path / "shards"
    blocked.write_text("a file where the shard folder should be")  # every write under it fails: a real OSError
    mon = ssmscope.Monitor(model, tmp_path / "b.duckdb", shards=blocked, probe_batch=batch(0), every=1)
    with pytest.raises(StoreError, match=r"cannot write the shard .* under .*shards.*Monitor.records"):
        with mon:
            for step in range(3):
                assert mon.step(step)  # training and probing go on
    assert sorted({r["step"] for r in mon.records}) == [0, 1, 2]
    assert sum("the next flush tries again" in r.getMessage() for r in caplog.records) == 1
    blocked.unlink()
    mon.flush()  # once the folder can be written, nothing was lost: the shard is written and ingested
    assert load_runs(tmp_path / "b.duckdb")["status"].to_list() == ["completed"]
    assert sorted(load_probe_frame(tmp_path / "b.duckdb")["step"].unique().to_list()) == [0, 1, 2]


def test_monitor_refuses_a_model_it_cannot_observe(tmp_path):
    with pytest.raises(ConfigError, match="Monitor observes"):
        ssmscope.Monitor(torch.nn.Linear(2, 2), tmp_path / "x.duckdb", probe_batch=None)
    with pytest.raises(ConfigError, match="every=0"):
        ssmscope.Monitor(ssmscope.MambaLM(tiny(d_model=8, n_layers=1)), tmp_path / "x.duckdb", probe_batch=None,
                         every=0)


# ----------------------------------------------------------------------------- transformers through the library
@pytest.mark.slow
def test_the_documented_example_coordinate_checks_a_transformers_mamba(tmp_path):
    pytest.importorskip("transformers")
    db = tmp_path / "ex.duckdb"
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "coord_check_hf.py"), "--widths", "16",
                           "32", "64", "--steps", "2", "--layers", "1", "--seq-len", "8", "--batch", "2", "--db",
                           str(db), "--html", str(tmp_path / "fig.html")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for preset in ("sp", "mup-ssm"):
        assert table.count(f"│ {preset}") >= 4  # x, y, Δx, Δy rows of each preset
    assert "saved 6 run(s)" in table and (tmp_path / "fig.html").stat().st_size > 10_000
    frame = load_probe_frame(db)
    assert set(frame["discretization"]) == {"euler"} and sorted(set(frame["n_u"])) == [16, 32, 64]
    assert frame.schema == pl.Schema(FRAME_SCHEMA)


def test_a_transformers_mamba_monitored_in_a_loop(tmp_path):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = ssmscope.HFMamba({"num_hidden_layers": 1, "vocab_size": 256})(32, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ssmscope.Monitor(model, tmp_path / "hf.duckdb", probe_batch=batch(0), every=2) as mon:
        for step in range(4):
            mon.step(step)
            ids = batch(step + 1)
            loss = torch.nn.functional.cross_entropy(model(input_ids=ids[:, :-1]).logits.reshape(-1, 256),
                                                     ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log_loss(step, loss)
    frame = load_probe_frame(tmp_path / "hf.duckdb")
    assert sorted(frame["step"].unique().to_list()) == [0, 2] and set(frame["discretization"]) == {"euler"}
    params = frame.filter(pl.col("site") == "param")["group"].unique().to_list()
    assert "x_proj_B:layers.0.mixer.x_proj.B.weight" in params  # ssmscope's names and roles
    assert frame.filter(pl.col("site") == "grad_x")["sumsq"].min() > 0


# ----------------------------------------------------------------------------- a family of one's own
def test_a_new_model_family_is_one_module_that_coord_check_runs_through_the_protocol(tmp_path):
    from toy_family import ToyFamily, ToyLM

    from ssmscope.probes.family import ModelFamily, Setting
    from ssmscope.ssm.config import Discretization
    from ssmscope.ssm.presets import load_preset

    family = ToyFamily()
    assert isinstance(family, ModelFamily)
    frame, made = ssmscope.coord_check(family, [8, 16, 32], batch(0), Grid(presets=["sp", "mup-ssm"], lrs=0.01),
                                       Training(steps=2), return_runs=True)
    assert sorted(frame["n_u"].unique().to_list()) == [8, 16, 32] and set(frame["layer"]) == {-1, 0}  # -1: whole-model
    assert set(frame["status"]) == {"completed"} and sorted(frame["step"].unique().to_list()) == [0, 1, 2]
    sites = set(frame.filter(pl.col("group") == "")["site"])
    assert {"x", "y", "cx", "grad_x", "grad_y"} <= sites  # the Observer tapped the toy's mixer
    assert "x_proj_B:layers.0.mixer.x_proj.B.weight" in set(frame["group"])  # roles by ssmscope's names
    assert {json.loads(r["config_json"])["family"]["model"] for r in made.rows} == {"tests.toy_family.ToyLM"}
    assert {r["d_model"] for r in made.rows} == {4, 8, 16} and {r["n_layers"] for r in made.rows} == {1}
    # step 0's training loss is the freshly built toy's cross entropy, computed here without ssmscope's loss
    subject = family.build(8, 8, Setting(load_preset("sp"), Discretization.ZOH, "adam", 0.01, 0, 0.0, True, False,
                                         "auto"), torch.device("cpu"), None)
    assert isinstance(subject.model, ToyLM)
    ids = batch(0)
    with torch.no_grad():
        logits = subject.model(ids[:, :-1])
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), ids[:, 1:].reshape(-1)).item()
    (sp_8,) = [d for d in made.values() if d.row["preset"] == "sp" and d.row["n_u"] == 8]
    assert sp_8.losses[0]["train_loss"] == want
    ssmscope.store.save(frame, tmp_path / "toy.duckdb", runs=made)
    assert load_runs(tmp_path / "toy.duckdb").height == 6
