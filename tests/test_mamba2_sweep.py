"""A Mamba-2 sweep end to end: spec → worker → shards → store → slopes → every dashboard page.

One real tiny store (built once per session): N_u 32, 64, 128 (heads of 16) at N_x 8, mamba2-sp and mamba2-mup,
two learning rates, 2 layers, 2 steps, the readout probes on.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from ssmscope.runs.cli.main import app as cli
from ssmscope.runs.store.db import load_probe_frame, load_runs
from ssmscope.runs.sweeps.spec import load_spec, parse_spec
from ssmscope.ssm.errors import ConfigError

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
PAGES = ["app_pages/runs.py", "app_pages/coord_check.py", "app_pages/slope_table.py", "app_pages/compare.py",
         "app_pages/lr_transfer.py", "app_pages/running.py", "app_pages/steps.py"]
SPEC = """
[sweep]
name = "m2-tiny"
[grid]
n_u = [32, 64, 128]
n_x = [8]
presets = ["mamba2-sp", "mamba2-mup"]
optimizers = ["adam"]
lrs = [0.003, 0.03]
seeds = [0]
[train]
model = "mamba2"
headdim = 16
steps = 2
batch = 2
seq_len = 8
n_layers = 2
eval_every = 2
eval_batches = 1
readout_probes = true
"""
N_RUNS = 3 * 2 * 2


@functools.cache
def build(root: Path) -> Path:
    from ssmscope.runs.sweeps.sweep import run_sweep

    root.mkdir(parents=True, exist_ok=True)
    (root / "m2.toml").write_text(SPEC)
    db = root / "store" / "ssmscope.duckdb"
    run_sweep(load_spec(root / "m2.toml"), db, device="cpu", workers=2)
    return db


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.getbasetemp() / "m2-store")


def test_the_store_holds_mamba2_runs_with_state_and_in_proj_slice_records(store):
    runs = load_runs(store)
    assert runs.height == N_RUNS and set(runs["status"]) == {"completed"}
    assert set(runs["model"]) == {"mamba2"} and set(runs["discretization"]) == {"euler"}
    assert set(runs["init_base"]) == {"mamba2"}
    probes = load_probe_frame(store)
    state = probes.filter((pl.col("site") == "x") & (pl.col("quantity") == "value"))
    assert set(state["layer"]) == {0, 1}
    # the state h of a Mamba-2 layer: N_u channels of N_x = 8 per token, B·L = 16 tokens
    counts = dict(state.group_by("n_u").agg(pl.col("count").first()).iter_rows())
    assert counts == {n: 2 * 8 * n * 8 for n in (32, 64, 128)}
    slices = probes.filter(pl.col("site") == "in_proj")
    assert set(slices["group"]) == {"z", "x", "B", "C", "dt"}
    assert set(slices["quantity"]) >= {"value", "delta_init", "delta_prev"}
    moved = slices.filter((pl.col("quantity") == "delta_init") & (pl.col("step") == 2))
    assert (moved["sumsq"] > 0).all()  # every slice moved after two Adam steps


def test_a_mamba2_run_id_depends_on_its_heads_and_an_s6_run_id_is_unchanged():
    spec = parse_spec({"grid": {"n_u": [64], "n_x": [8], "presets": ["mamba2-sp"], "lrs": [0.01]},
                       "train": {"model": "mamba2"}}, "a.toml")
    wide = parse_spec({"grid": {"n_u": [64], "n_x": [8], "presets": ["mamba2-sp"], "lrs": [0.01]},
                       "train": {"model": "mamba2", "nheads": 2}}, "a.toml")
    assert spec.runs[0].run_id != wide.runs[0].run_id
    assert spec.runs[0].model_config().nheads == 4 and wide.runs[0].model_config().headdim == 32
    s6 = parse_spec({"grid": {"widths": [32], "presets": ["sp"], "lrs": [0.01], "discretizations": ["zoh"]}},
                    "b.toml").runs[0]
    assert "model" not in s6.run_id and s6.run_id == s6.__class__(**{**s6.to_dict()}).run_id
    assert s6.model == "mamba"


@pytest.mark.parametrize(("grid", "train", "message"), [
    ({"presets": ["sp"]}, {"model": "mamba2"}, "'sp' is a mamba preset and train.model is mamba2"),
    ({"presets": ["mamba2-sp"]}, {}, "'mamba2-sp' is a mamba2 preset and train.model is mamba"),
    ({"presets": ["mamba2-sp"], "discretizations": ["zoh"]}, {"model": "mamba2"}, "one discretisation"),
    ({"presets": ["mamba2-sp"], "n_u": [40]}, {"model": "mamba2"}, "N_u=40 is not a multiple of train.headdim=16"),
    ({"presets": ["mamba2-sp"]}, {"model": "mamba2", "nheads": 3}, "not a multiple of train.nheads=3"),
    ({"presets": ["mamba2-sp"]}, {"model": "mamba2", "ngroups": 3}, "not a multiple of train.ngroups=3"),
    ({"presets": ["mamba2-sp"]}, {"model": "mamba2", "headdim": 8, "nheads": 4}, "not both"),
    ({"presets": ["sp"]}, {"headdim": 8}, "a Mamba-2 key"),
    ({"presets": ["mamba2-sp"]}, {"model": "mamba3"}, "allowed: mamba, mamba2"),
    ({"presets": ["mamba2-sp"]}, {"model": "mamba2", "norm": "layer"}, "allowed: group, full"),
])
def test_mamba2_spec_mistakes_are_one_line_errors(grid, train, message):
    data = {"grid": {"n_u": [64], "n_x": [8], "lrs": [0.01], **grid}, "train": train}
    with pytest.raises(ConfigError, match=message) as err:
        parse_spec(data, "bad.toml")
    assert "\n" not in str(err.value)


def test_slopes_fit_the_mamba2_store_per_preset(store):
    result = CliRunner().invoke(cli, ["slopes", "--db", str(store), "--width", "n_u", "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pl.read_csv(result.output.encode())
    assert set(table["preset"]) == {"mamba2-sp", "mamba2-mup"}
    assert set(table["model"]) == {"mamba2"} and set(table["site"]) >= {"x", "y"}
    slopes = table["estimate"].drop_nulls().to_list()
    assert len(slopes) == table.height and all(math.isfinite(v) for v in slopes)


@pytest.mark.parametrize("page", PAGES)
def test_every_dashboard_page_shows_the_mamba2_store(store, monkeypatch, tmp_path, page):
    monkeypatch.setenv("SSMSCOPE_DB", str(store))
    monkeypatch.setenv("SSMSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(str(MAIN), default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if page in ("app_pages/coord_check.py", "app_pages/compare.py", "app_pages/steps.py"):
        assert at.get("plotly_chart"), page


def test_the_slices_table_fits_every_in_proj_block_and_says_when_there_are_none(store, tmp_path):
    result = CliRunner().invoke(cli, ["slopes", "--db", str(store), "--width", "n_u", "--table", "slices",
                                      "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pl.read_csv(result.output.encode())
    assert set(table["site"]) == {"in_proj"} and set(table["group"]) == {"z", "x", "B", "C", "dt"}
    assert set(table["quantity"]) == {"value", "delta_init", "delta_prev"}
    assert table["estimate"].is_finite().all()
    empty = CliRunner().invoke(cli, ["slopes", "--db", str(store), "--width", "n_u", "--table", "slices",
                                     "--where", "preset = 'nothing'"])
    assert empty.exit_code != 0 and "Traceback" not in empty.output


def test_column_titles_drop_the_shared_family_prefix_but_the_first():
    from ssmscope.app.figures import compact_titles

    titles = ["mamba2-sp", "mamba2-mup", "mamba2-lmengine-pr131"]
    assert compact_titles(titles) == ["mamba2-sp", "mup", "lmengine-pr131"]
    assert compact_titles(["sp", "mup", "mup-ssm"]) == ["sp", "mup", "mup-ssm"]  # S6 names: no family prefix
    assert compact_titles(["mup-ssm · euler", "mup-ssm · zoh"]) == ["mup-ssm · euler", "mup-ssm · zoh"]
    assert compact_titles(["mamba2-sp", "sp"]) == ["mamba2-sp", "sp"]
