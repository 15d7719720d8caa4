"""Golden comparison: the smoke sweep and the CLI's outputs on it are what they were when these files were made.

The redesign of the run path, the preset layer and the model families must change no number: this test runs
the `smoke` sweep (36 runs) through the CLI and compares, against `tests/golden/`, the store's row counts,
every run's keys and config (everything but timings, host and provenance), every probe value (to 1e-6
relative: the compiled scan's lane width differs between CPUs, and with it the last bits of a sum), and
the exact text of `slopes` (Markdown and the running fit), `transfer` and `param show` for each preset.

The golden files were written by the code before the redesign (commit noted in tests/golden/README.md).
An intended change of output is recorded by `SSMSCOPE_UPDATE_GOLDEN=1 pytest tests/test_golden.py`, which
rewrites them; the diff then shows exactly what changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from ssmscope.runs.cli.main import app
from ssmscope.runs.store.db import counts, load_probe_frame, load_runs

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SSMSCOPE_UPDATE_GOLDEN") == "1"
RUN_KEYS = ("run_id", "spec", "status", "last_finite_step", "error", "preset", "discretization", "optimizer", "lr",
            "seed", "n_u", "n_x", "d_model", "n_layers", "steps", "batch", "seq_len", "task", "fixed_batch",
            "dt_min", "dt_max", "init_base")
"""Run columns compared exactly (timings, device, scan backend, host and versions vary by machine)."""
PROBE_KEYS = ("run_id", "step", "layer", "site", "quantity", "group")
PROBE_VALUES = ("sumsq", "count", "maxabs", "token_norm_sum", "n_tokens", "channel_norm_sum", "n_channels")
COMMANDS: dict[str, list[str]] = {
    "slopes.md": ["slopes", "--format", "md"],
    "slopes-running.md": ["slopes", "--fit", "running", "--format", "md"],
    "transfer.txt": ["transfer", "--use", "train_loss", "--format", "md"],
    **{f"param-show-{p}-{d}.txt": ["param", "show", p, "--d-model", "64", "--d-state", "32", "--optimizer", "adam",
                                   "--discretization", d] for p in ("sp", "mup", "mup-ssm") for d in ("zoh", "euler")},
}
"""Golden file → the CLI command whose output (stdout and stderr, exit code in the first line) it holds."""


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("golden") / "smoke.duckdb"
    result = CliRunner().invoke(app, ["sweep", "smoke", "--db", str(db), "--workers", "2"])
    assert result.exit_code == 0, result.output
    return db


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with SSMSCOPE_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"{name} differs from its golden file"


def test_smoke_counts_and_runs_are_the_golden_ones(smoke_store):
    _check("smoke-counts.json", json.dumps(counts(smoke_store), indent=1) + "\n")
    runs = load_runs(smoke_store).select(RUN_KEYS).sort("run_id")
    _check("smoke-runs.csv", runs.write_csv())


def test_smoke_probe_values_are_the_golden_ones(smoke_store):
    probes = load_probe_frame(smoke_store).select(*PROBE_KEYS, *PROBE_VALUES).sort(PROBE_KEYS)
    path = GOLDEN / "smoke-probes.parquet"
    if UPDATE:
        probes.write_parquet(path)
    golden = pl.read_parquet(path)
    assert probes.select(PROBE_KEYS).equals(golden.select(PROBE_KEYS)), "the probe keys differ"
    for column in PROBE_VALUES:
        got, want = probes[column].to_numpy(), golden[column].to_numpy()
        assert np.allclose(got, want, rtol=1e-6, atol=0, equal_nan=True), column


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_output_on_the_smoke_store_is_the_golden_one(smoke_store, name):
    result = CliRunner().invoke(app, [*COMMANDS[name], "--db", str(smoke_store)] if COMMANDS[name][0] != "param"
                                else COMMANDS[name])
    _check(name, f"exit {result.exit_code}\n{result.output}".replace(str(smoke_store), "<db>"))
