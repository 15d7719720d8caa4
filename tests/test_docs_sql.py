"""Every SQL example in docs/store.md runs against a store made by a real (tiny) sweep."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from ssmscope.runs.sweeps.spec import parse_spec
from ssmscope.runs.sweeps.sweep import run_sweep

DOC = Path(__file__).parents[1] / "docs" / "store.md"
SPEC = {
    "sweep": {"name": "docs"},
    "grid": {"widths": [16, 32, 64], "presets": ["sp", "mup-ssm"], "discretizations": ["zoh"],
             "optimizers": ["adam"], "lrs": [0.01], "seeds": [0]},
    "train": {"steps": 2, "batch": 2, "seq_len": 8, "n_layers": 2},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("docs") / "store.duckdb"
    run_sweep(parse_spec(SPEC, "docs"), db, device="cpu")
    return db


@pytest.mark.parametrize("index", range(len(re.findall(r"```sql\n", DOC.read_text()))))
def test_store_doc_sql_answers(store, index):
    query = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)[index]
    con = duckdb.connect(str(store), read_only=True)
    try:
        rows = con.execute(query).fetchall()
    finally:
        con.close()
    if "diverged" not in query:  # nothing diverges in this sweep; every other query has rows
        assert rows, query
