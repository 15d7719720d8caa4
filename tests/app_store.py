"""Stores for the dashboard tests: one real tiny store (built once per test session), and broken ones.

The real store holds two sweeps run on the CPU with the real worker (runs.sweeps.sweep.run_sweep):
  app-coord — a coordinate check: joint widths 16, 32, 64 × sp, mup, mup-ssm × zoh, euler × 2 seeds
              (36 runs, 2 steps, 2 layers, gradients recorded; µP and µP-SSM are one parameterization
              under ZOH + Adam on this joint axis, so those runs are identical);
  app-lr    — a learning-rate grid: N_u 16, 32, 64 at N_x = 8 × sp, mup-ssm × zoh × lr 0.003, 0.03, 10
              (18 runs, 1 layer; lr 10 diverges), with a held-out loss and the readout probes.
Broken stores (`make_*`) are built without running anything.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from ssmscope.runs.store import queries
from ssmscope.runs.store.db import connect

COORD_SPEC = """
[sweep]
name = "app-coord"
description = "dashboard tests: coordinate check"
[grid]
widths = [16, 32, 64]
presets = ["sp", "mup", "mup-ssm"]
discretizations = ["zoh", "euler"]
optimizers = ["adam"]
lrs = [0.01]
seeds = [0, 1]
[train]
steps = 2
batch = 2
seq_len = 8
n_layers = 2
"""

LR_SPEC = """
[sweep]
name = "app-lr"
description = "dashboard tests: learning-rate transfer"
[grid]
n_u = [16, 32, 64]
n_x = [8]
presets = ["sp", "mup-ssm"]
discretizations = ["zoh"]
optimizers = ["adam"]
lrs = [0.003, 0.03, 10.0]
seeds = [0]
[train]
steps = 2
log_every = 2
batch = 2
seq_len = 8
n_layers = 1
grads = false
eval_every = 2
eval_batches = 1
readout_probes = true
"""

COORD_RUNS, LR_RUNS = 36, 18


@functools.cache
def build_store(root: Path) -> Path:
    """Run both sweeps into root/store/ssmscope.duckdb (once per root and process)."""
    from ssmscope.runs.sweeps.spec import load_spec
    from ssmscope.runs.sweeps.sweep import run_sweep

    root.mkdir(parents=True, exist_ok=True)
    db = root / "store" / "ssmscope.duckdb"
    for name, text in (("app-coord", COORD_SPEC), ("app-lr", LR_SPEC)):
        spec = root / f"{name}.toml"
        spec.write_text(text)
        run_sweep(load_spec(spec), db, device="cpu", workers=2)  # 2 workers: one torch thread each
    return db


@pytest.fixture(scope="session")
def app_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real tiny store (path of its DuckDB file)."""
    return build_store(tmp_path_factory.getbasetemp() / "app-store")


def copy_sweeps(db: Path, dest: Path, specs: set[str]) -> Path:
    """A new store at dest/ssmscope.duckdb holding only the runs of `specs` (their shards copied and ingested).

    Shards are found and placed where the store layout keeps them (runs.store.db.shard_dir_for)."""
    import shutil

    import pyarrow.parquet as pq

    from ssmscope.runs.store.db import ingest, shard_dir_for

    store = dest / "ssmscope.duckdb"
    shards = shard_dir_for(store)
    for shard in shard_dir_for(db).iterdir():
        if shard.is_dir() and not shard.name.startswith(".") and \
                pq.read_table(shard / "runs.parquet", columns=["spec"])["spec"][0].as_py() in specs:
            shutil.copytree(shard, shards / shard.name)
    ingest(store, shards)
    return store


# --- broken stores -------------------------------------------------------------------------------
def make_empty(path: Path) -> Path:
    """A store with every table and no runs (what `ssmscope ingest` leaves before any sweep)."""
    connect(path).close()
    return path


def make_old_schema(path: Path) -> Path:
    """A store that says it has schema version 0."""
    con = connect(path)
    con.execute(queries.SET_META, ["schema_version", "0"])
    con.close()
    return path


def make_foreign(path: Path) -> Path:
    """A DuckDB file without ssmscope's tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    duckdb.connect(str(path)).close()
    return path


def make_garbage(path: Path) -> Path:
    """A file that is not a database at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a DuckDB file\n" * 100)
    return path


class Writer:
    """Another process holding the store open for writing (as a sweep's ingest does).

    write=True: it also changes the file first (a table of its own, checkpointed), as an ingest does, so
    the store's version moves on while the lock is held.
    """

    def __init__(self, path: Path, write: bool = False) -> None:
        change = ("con.execute('CREATE TABLE IF NOT EXISTS writer_test AS SELECT range AS i FROM range(100000)'); "
                  "con.execute('CHECKPOINT'); ") if write else ""
        code = (f"import sys, duckdb; con = duckdb.connect(sys.argv[1]); {change}print('ready', flush=True); "
                "sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"the writer process did not start: {line!r}"

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- servers -------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll Streamlit's /_stcore/health until it answers "ok" (or the server exits, or time runs out)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
