"""The store under faults, each caused for real where this machine allows it and checked by row counts
against a clean store: concurrent ingests beside a sweep, two stores in one folder, the legacy shared
shard folder, corrupt shards, full disks, read-only folders, held locks, interrupted ingests, and the
failures a sweep must survive (an unwritable failed shard, a store locked at the end, a broken executor).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import faults
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_spec_toml
from typer.testing import CliRunner

from ssmscope.runs.cli.main import app
from ssmscope.runs.store import ingest as ingest_module
from ssmscope.runs.store import shards as shards_module
from ssmscope.runs.store.db import StoreLocked, counts, ingest, shard_dir_for
from ssmscope.runs.store.filelock import HeldLock
from ssmscope.runs.store.layout import MIGRATED_MARKER
from ssmscope.runs.store.schema import SCHEMA_VERSION
from ssmscope.runs.store.shard_maintenance import clean_stale, stale_temporaries
from ssmscope.runs.store.shards import QUARANTINE_DIR, list_shards, write_shard
from ssmscope.runs.sweeps import sweep as sweep_module
from ssmscope.runs.sweeps.executors import Executor
from ssmscope.runs.sweeps.spec import load_spec, parse_spec
from ssmscope.runs.sweeps.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
LIGHT = {"steps = 2": "steps = 1", "n_layers = 2": "n_layers = 1"}  # faults need runs, not long ones
TINY = tiny_spec_toml()  # 4 runs: widths 16, 32 × sp, mup-ssm; 1 step, 1 layer
HALF = tiny_spec_toml(widths=(16,))  # its 2 runs of width 16
for old, new in LIGHT.items():
    TINY, HALF = TINY.replace(old, new), HALF.replace(old, new)


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    monkeypatch.delenv("SSMSCOPE_SHARDS", raising=False)
    faults.clear(monkeypatch)


@dataclass(frozen=True)
class Clean:
    """A clean sweep of TINY: its spec file, store, shard folder, counts, and rows per run."""

    spec: Path
    db: Path
    shards: Path
    counts: dict[str, int]
    per_run: dict[str, tuple[int, int]]
    """run_id → (probe rows, loss rows)."""

    def without(self, *run_ids: str) -> dict[str, int]:
        """The clean counts less the rows of `run_ids`."""
        return {"runs": self.counts["runs"] - len(run_ids),
                "probes": self.counts["probes"] - sum(self.per_run[r][0] for r in run_ids),
                "losses": self.counts["losses"] - sum(self.per_run[r][1] for r in run_ids)}

    def only(self, *run_ids: str) -> dict[str, int]:
        return self.without(*(r for r in self.per_run if r not in run_ids))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Clean:
    root = tmp_path_factory.mktemp("clean")
    spec = root / "tiny.toml"
    spec.write_text(TINY)
    db = root / "store.duckdb"
    assert run_sweep(load_spec(spec), db, device="cpu", workers=1).statuses == {"completed": 4}
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("""SELECT r.run_id, (SELECT count(*) FROM probes p WHERE p.run_id = r.run_id),
                                     (SELECT count(*) FROM losses l WHERE l.run_id = r.run_id)
                              FROM runs r""").fetchall()
    finally:
        con.close()
    return Clean(spec, db, shard_dir_for(db), counts(db), {r: (p, n) for r, p, n in rows})


def copy_shards(clean: Clean, dest: Path, run_ids: list[str] | None = None) -> Path:
    """Published shards of the clean sweep (all, or those of `run_ids`) copied into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for shard in list_shards(clean.shards):
        if run_ids is None or shard.name in run_ids:
            shutil.copytree(shard, dest / shard.name)
    return dest


def half_ids() -> list[str]:
    return [c.run_id for c in parse_spec(tomllib.loads(HALF), "half").runs]


def one_line(output: str) -> bool:
    return "Traceback" not in output and output.strip().count("\n") == 0


class Holder:
    """Another process holding the store open: read-only (like the dashboard) or for writing (like an ingest)."""

    def __init__(self, db: Path, read_only: bool):
        code = ("import sys, duckdb; con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro'); "
                "print('ready', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(db), "ro" if read_only else "rw"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=20)


# --- the shard protocol -------------------------------------------------------------------------
def _temporary(folder: Path, name: str, age_s: float) -> Path:
    path = folder / name
    path.mkdir()
    (path / "runs.parquet").write_bytes(b"half written")
    lock = folder / f"{name}.lock"
    lock.touch()
    then = time.time() - age_s
    for p in (path / "runs.parquet", path, lock):
        os.utime(p, (then, then))
    return lock


def test_ingest_never_touches_writers_temporaries_and_cleanup_takes_only_stale_ones(clean, tmp_path):
    folder = copy_shards(clean, tmp_path / "store.duckdb.shards")
    # named as writers name them (run id, host, pid, 8 hex digits)
    live_lock = _temporary(folder, ".tmp-aaaa000000000001-host-11-0000aa01", 7200)  # old; its writer lives (locked)
    _temporary(folder, ".tmp-bbbb000000000002-host-12-0000bb02", 7200)  # old, writer gone
    _temporary(folder, ".tmp-cccc000000000003-host-13-0000cc03", 10)  # fresh, writer gone (could be slow): kept
    legacy = folder / ".old-dddd000000000004-1234abcd"  # an older ssmscope's leftover (no lock file)
    legacy.mkdir()
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    writer = HeldLock(live_lock)
    try:
        db = tmp_path / "store.duckdb"
        report = ingest(db)
        assert len(report.loaded) == 4 and counts(db) == clean.counts
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".old-")))
        assert len(leftovers) == 7  # 3 folders + 3 locks + the legacy one: ingest touched none
        assert {t.name for t in stale_temporaries(folder)} == {".tmp-bbbb000000000002-host-12-0000bb02",
                                                                ".old-dddd000000000004-1234abcd"}
        result = CliRunner().invoke(app, ["ingest", "--db", str(db), "--clean-stale", "--older-than", "60"])
        assert result.exit_code == 0, result.output
        assert "removed 2 stale temporaries" in result.output
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".old-"))) == [
            ".tmp-aaaa000000000001-host-11-0000aa01", ".tmp-aaaa000000000001-host-11-0000aa01.lock",
            ".tmp-cccc000000000003-host-13-0000cc03", ".tmp-cccc000000000003-host-13-0000cc03.lock"]
    finally:
        writer.release()
    assert clean_stale(folder, 3600) == [".tmp-aaaa000000000001-host-11-0000aa01"]  # its writer is gone now
    assert counts(db) == clean.counts


def test_a_failed_write_leaves_nothing_and_keeps_the_published_shard(clean, tmp_path, monkeypatch):
    folder = copy_shards(clean, tmp_path / "shards")
    run_id = next(iter(clean.per_run))
    row = pq.read_table(folder / run_id / "runs.parquet").to_pylist()[0]
    before = {f.name: f.read_bytes() for f in (folder / run_id).iterdir()}
    real, calls = pq.write_table, []

    def full_disk(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kw)

    monkeypatch.setattr(shards_module.pq, "write_table", full_disk)
    with pytest.raises(OSError) as caught:
        write_shard(folder, {**row, "finished_at": "later"}, [], [])
    assert caught.value.errno == errno.ENOSPC
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]  # its temporary and lock are gone
    assert {f.name: f.read_bytes() for f in (folder / run_id).iterdir()} == before  # the published shard stands


def test_without_locks_a_shard_swapped_while_read_is_read_again(clean, tmp_path, monkeypatch):
    """On a filesystem without locks, a retried run's writer may swap its shard mid-read: ingest notices the
    run row changed under it and reads again, loading the new shard whole (never a mix)."""
    folder = copy_shards(clean, tmp_path / "shards")
    run_id = next(iter(clean.per_run))
    row = pq.read_table(folder / run_id / "runs.parquet").to_pylist()[0]
    losses = pq.read_table(folder / run_id / "losses.parquet").to_pylist()

    @contextmanager
    def no_locks(*args, **kw):
        yield False

    real, reads = ingest_module.read_shard, []

    def swapped_after_first_read(shard):
        tables = real(shard)
        reads.append(shard.name)
        if shard.name == run_id and reads.count(run_id) == 1:  # the writer of a retry publishes right now
            write_shard(folder, {**row, "finished_at": "retried"}, [], losses[:1])
        return tables

    monkeypatch.setattr(ingest_module, "publish_lock", no_locks)
    monkeypatch.setattr(ingest_module, "read_shard", swapped_after_first_read)
    db = tmp_path / "store.duckdb"
    report = ingest(db, folder)
    assert len(report.loaded) == 4 and reads.count(run_id) == 2
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT finished_at FROM runs WHERE run_id = ?", [run_id]).fetchone() == ("retried",)
        assert con.execute("SELECT count(*) FROM probes WHERE run_id = ?", [run_id]).fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM losses WHERE run_id = ?", [run_id]).fetchone() == (1,)
    finally:
        con.close()


def test_older_shards_load_and_newer_ones_are_left_in_place(clean, tmp_path):
    """An older shard (a column missing) loads with nulls; a shard declaring a newer schema is left in place
    unloaded; a shard with an extra column but no newer schema loads its known columns and says which it left."""
    folder = copy_shards(clean, tmp_path / "shards")
    old, new, extra = sorted(clean.per_run)[:3]
    runs = pq.read_table(folder / old / "runs.parquet")
    pq.write_table(runs.drop_columns(["hostname"]), folder / old / "runs.parquet")  # before a column existed
    runs = pq.read_table(folder / new / "runs.parquet")
    version = runs.column_names.index("schema_version")
    pq.write_table(runs.set_column(version, "schema_version", pa.array([SCHEMA_VERSION + 1])),
                   folder / new / "runs.parquet")
    probes = pq.read_table(folder / extra / "probes.parquet")
    pq.write_table(probes.append_column("from_the_future", probes.column("step")), folder / extra / "probes.parquet")
    db = tmp_path / "store.duckdb"
    report = ingest(db, folder)
    assert sorted(report.loaded) == sorted(r for r in clean.per_run if r != new) and not report.quarantined
    assert report.newer == {new: f"schema version {SCHEMA_VERSION + 1} (this ssmscope reads {SCHEMA_VERSION})"}
    assert (folder / new).is_dir()
    assert report.unknown_columns == {extra: "probes.parquet:from_the_future"}
    assert "without columns this ssmscope does not know" in report.problems()
    assert counts(db) == clean.without(new)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT hostname FROM runs WHERE run_id = ?", [old]).fetchone() == (None,)
    finally:
        con.close()


@pytest.mark.slow
def test_an_ingest_loop_beside_a_two_worker_sweep_loses_nothing(clean, tmp_path):
    """30 ingests (another process's, as `ssmscope ingest` would be) race the sweep's workers and its own
    ingests; the sweep ends with the clean row counts and nothing quarantined."""
    db = tmp_path / "store.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = subprocess.Popen([sys.executable, "-m", "ssmscope.runs.cli.main", "sweep", str(clean.spec), "--db",
                              str(db), "--device", "cpu", "--workers", "2", "--ingest-every", "1"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outcomes: list[str] = []

    def loop() -> None:
        while len(outcomes) < 30 and sweep.poll() is None:
            if not db.exists():
                time.sleep(0.05)
                continue
            try:
                report = ingest(db, wait_s=0.5)
                outcomes.append("quarantined" if report.quarantined else "ok")
            except StoreLocked:
                outcomes.append("locked")
            time.sleep(0.1)

    thread = threading.Thread(target=loop)
    thread.start()
    out, _ = sweep.communicate(timeout=300)
    thread.join(timeout=60)
    assert sweep.returncode == 0, out
    assert "Traceback" not in out and "quarantined" not in outcomes, (out, outcomes)
    assert outcomes.count("ok") >= 3, outcomes
    assert counts(db) == clean.counts
    assert not (shard_dir_for(db) / QUARANTINE_DIR).exists()


# --- stores and their shard folders --------------------------------------------------------------
def test_two_stores_in_one_folder_keep_their_own_runs(clean, tmp_path):
    folder = tmp_path / "data"
    small = TINY
    a, b = folder / "a.duckdb", folder / "b.duckdb"
    for spec_text, db in ((small.replace("widths = [16, 32]", "widths = [16]"), a),
                          (small.replace("widths = [16, 32]", "widths = [32]"), b)):
        report = run_sweep(parse_spec(tomllib.loads(spec_text), "two"), db, device="cpu", workers=1)
        assert report.statuses == {"completed": 2} and report.own_ingested == 2 and report.other_ingested == 0
    result = CliRunner().invoke(app, ["ingest", "--db", str(a)])
    assert result.exit_code == 0 and "0 new" in result.output
    assert counts(a)["runs"] == 2 and counts(b)["runs"] == 2
    assert {p.name for p in folder.iterdir()} == {"a.duckdb", "a.duckdb.shards", "b.duckdb", "b.duckdb.shards"}
    assert not set(load_ids(a)) & set(load_ids(b))


def load_ids(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()]
    finally:
        con.close()


def test_the_legacy_shared_folder_is_migrated_store_by_store(clean, tmp_path):
    folder = tmp_path / "data"
    legacy = copy_shards(clean, folder / "shards")
    a, b = folder / "a.duckdb", folder / "b.duckdb"
    ingest(a, legacy)  # the old layout: both stores ingested from the shared folder
    ingest(b, copy_shards(clean, tmp_path / "subset", half_ids()))
    report = ingest(a)
    assert report.migration is not None and (report.migration.linked, report.migration.left) == (4, 0)
    assert counts(a) == clean.counts and report.skipped == 4
    result = CliRunner().invoke(app, ["ingest", "--db", str(b)])
    assert result.exit_code == 0, result.output
    assert "2 shard(s) linked" in result.output and "2 left there" in result.output
    assert sorted(p.name for p in list_shards(folder / "b.duckdb.shards")) == sorted(half_ids())
    assert counts(b) == clean.only(*half_ids())
    assert len(list_shards(legacy)) == 4 and (folder / "a.duckdb.shards" / MIGRATED_MARKER).exists()
    # a store alone in its folder takes every legacy shard, ingested or not: the sweep resumes from them
    alone = tmp_path / "alone"
    copy_shards(clean, alone / "shards")
    resumed = run_sweep(load_spec(clean.spec), alone / "store.duckdb", device="cpu", workers=1)
    assert resumed.skipped == 4 and not resumed.statuses and resumed.migration.linked == 4
    assert counts(alone / "store.duckdb") == clean.counts


# --- corrupt shards ----------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "runs.parquet truncated": ("runs.parquet", _truncate, "not a Parquet file"),
    "probes.parquet garbage": ("probes.parquet", lambda p: p.write_bytes(os.urandom(3000)), "not a Parquet file"),
    "losses.parquet empty": ("losses.parquet", lambda p: p.write_bytes(b""), "empty file"),
    "empty folder": (None, None, "empty folder"),
}


def damage(shard: Path, kind: str) -> str:
    name, harm, reason = DAMAGE[kind]
    if name is None:
        shutil.rmtree(shard)
        shard.mkdir()
    else:
        harm(shard / name)
    return reason


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_corrupt_shard_is_quarantined_and_every_good_shard_loads(clean, tmp_path, kind):
    db = tmp_path / "store.duckdb"
    folder = copy_shards(clean, shard_dir_for(db))
    bad = sorted(clean.per_run)[1]
    reason = damage(folder / bad, kind)
    result = CliRunner().invoke(app, ["ingest", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "ingested 3 new" in result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "quarantined 1 bad shard(s)" in warning[0] and bad in warning[0]
    assert reason in warning[0]
    assert counts(db) == clean.without(bad)
    (moved,) = (folder / QUARANTINE_DIR).iterdir()
    assert moved.name.startswith(bad) and reason in (moved / "REASON.txt").read_text()
    again = ingest(db)
    assert not again.quarantined and again.skipped == 3 and counts(db) == clean.without(bad)


@pytest.mark.parametrize("kind", ["runs.parquet truncated", "losses.parquet empty"])
def test_resume_reruns_a_run_whose_shard_is_corrupt(clean, tmp_path, kind):
    db = tmp_path / "store.duckdb"
    folder = copy_shards(clean, shard_dir_for(db))
    bad = sorted(clean.per_run)[2]
    damage(folder / bad, kind)
    report = run_sweep(load_spec(clean.spec), db, device="cpu", workers=1)
    assert report.skipped == 3 and report.statuses == {"completed": 1} and not report.quarantined
    assert counts(db) == clean.counts


# --- storage faults ------------------------------------------------------------------------------
def test_a_full_shard_disk_stops_the_sweep_in_one_line_and_keeps_finished_runs(clean, tmp_path, monkeypatch):
    db = tmp_path / "store.duckdb"
    spec = tmp_path / "half.toml"
    spec.write_text(HALF)
    real, writes = pq.write_table, []

    def fills_after_one_run(table, where, **kw):
        writes.append(where)
        if len(writes) > 3:  # three files a shard: the second run's shard finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kw)

    monkeypatch.setattr(shards_module.pq, "write_table", fills_after_one_run)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--db", str(db), "--retries", "2"])
    assert result.exit_code == 2, result.output
    assert one_line(result.stderr) and "the disk is full" in result.stderr and "rerun the same command" in result.stderr
    assert "1 completed, 0 diverged, 1 failed" in result.stdout and "0 retried" in result.stdout
    assert counts(db) == clean.only(half_ids()[0])
    assert not [p for p in shard_dir_for(db).iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(shards_module.pq, "write_table", real)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--db", str(db)])
    assert result.exit_code == 0 and "1 completed, 0 diverged, 0 failed, 1 skipped" in result.output
    assert counts(db) == clean.only(*half_ids())


def _root_with_mount() -> str | None:
    """Why a real small filesystem cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    probe = tempfile.mkdtemp(prefix="ssmscope-mount-")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True)
        if done.returncode != 0:
            return f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
        subprocess.run(["umount", probe], check=True)
        return None
    except FileNotFoundError:
        return "no mount command"
    finally:
        os.rmdir(probe)


@pytest.mark.skipif(bool(_root_with_mount()), reason=str(_root_with_mount()))
def test_a_full_store_disk_is_one_line_and_ingest_finishes_once_space_is_freed(clean, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], check=True)
    try:
        db = small / "store.duckdb"
        shards = copy_shards(clean, tmp_path / "shards")
        ingest(db, tmp_path / "empty")  # an empty store on the small disk
        filler = small / "filler"
        with open(filler, "wb") as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        result = CliRunner().invoke(app, ["ingest", "--db", str(db), "--shards", str(shards)])
        assert result.exit_code == 2, result.output
        assert one_line(result.stderr) and "the disk is full" in result.stderr and str(small) in result.stderr
        filler.unlink()
        result = CliRunner().invoke(app, ["ingest", "--db", str(db), "--shards", str(shards)])
        assert result.exit_code == 0, result.output
        assert counts(db) == clean.counts
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _unprivileged() -> list[str] | None:
    """A command prefix that runs without the power to ignore file modes: none for a non-root user, setpriv to
    the user nobody for root; None where neither works (root without setpriv, or a venv nobody cannot read)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        return None
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    done = subprocess.run([*prefix, sys.executable, "-c", "import ssmscope.runs.store.db"], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return prefix if done.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.skipif(_unprivileged() is None, reason="as root, needs setpriv and a venv the user nobody can read")
def test_read_only_folders_fail_before_training_in_one_line(clean, tmp_path):
    """Run unprivileged (as nobody when we are root): a store in a folder it may not write (the write-ahead log
    cannot be created) and a shard folder it may not write each stop the sweep before any run, and ingest alike."""
    base = Path(tempfile.mkdtemp(prefix="ssmscope-ro-"))
    locked_dir, shards = base / "locked", base / "shards"
    try:
        os.chmod(base, 0o755)
        locked_dir.mkdir()
        db = locked_dir / "store.duckdb"
        ingest(db, copy_shards(clean, shards, half_ids()))
        os.chmod(db, 0o666)  # the file is writable, its folder is not
        for folder in (locked_dir, shards):  # root-owned 755 for nobody; read-only for ourselves otherwise
            os.chmod(folder, 0o755 if os.geteuid() == 0 else 0o555)
        open_dir = base / "open"
        open_dir.mkdir()
        os.chmod(open_dir, 0o777)
        spec = base / "tiny.toml"
        spec.write_text(TINY)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(open_dir)}
        cli = [*_unprivileged(), sys.executable, "-m", "ssmscope.runs.cli.main"]
        cases = [
            (["sweep", str(spec), "--db", str(db), "--shards", str(open_dir / "shards")], f"{db}.wal"),
            (["sweep", str(spec), "--db", str(open_dir / "s.duckdb"), "--shards", str(shards)], str(shards)),
            (["ingest", "--db", str(db), "--shards", str(copy_shards(clean, base / "all"))], f"{db}.wal"),
        ]
        for args, named in cases:
            done = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=120, cwd=open_dir)
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert one_line(done.stderr) and "Permission denied" in done.stderr and named in done.stderr, done.stderr
        assert not list((open_dir / "shards").glob("[0-9a-f]*"))  # nothing trained
        assert counts(db) == clean.only(*half_ids())
    finally:
        for folder in (locked_dir, shards):
            if folder.exists():
                os.chmod(folder, 0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("read_only", [True, False])
def test_a_held_lock_names_its_holder_in_one_line(clean, tmp_path, read_only):
    db = tmp_path / "store.duckdb"
    ingest(db, copy_shards(clean, tmp_path / "shards", half_ids()))
    holder = Holder(db, read_only)
    try:
        with pytest.raises(StoreLocked) as caught:
            ingest(db, tmp_path / "shards", wait_s=0.3)
        pid = holder.proc.pid
        expected = f"open for reading by PID {pid}" if read_only else f"being written by another process (PID {pid}"
        assert expected in str(caught.value)
        result = CliRunner().invoke(app, ["ingest", "--db", str(db), "--wait", "0"])
        assert result.exit_code == 2 and one_line(result.stderr) and expected in result.stderr
    finally:
        holder.close()


def test_an_interrupted_ingest_is_one_line_and_the_rerun_finishes(clean, tmp_path, monkeypatch):
    db = tmp_path / "store.duckdb"
    copy_shards(clean, shard_dir_for(db))
    real, calls = ingest_module._insert, []

    def second_ctrl_c(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # a real SIGINT, as from the terminal
        return real(*args, **kw)

    monkeypatch.setattr(ingest_module, "_insert", second_ctrl_c)
    result = CliRunner().invoke(app, ["ingest", "--db", str(db)])
    assert result.exit_code == 130, result.output
    assert one_line(result.stderr) and "ingest interrupted after loading 2 shard(s)" in result.stderr
    loaded = load_ids(db)
    assert len(loaded) == 2 and counts(db) == clean.only(*loaded)  # whole runs only, nothing half-loaded
    monkeypatch.setattr(ingest_module, "_insert", real)
    assert len(ingest(db).loaded) == 2 and counts(db) == clean.counts


def test_a_stop_signal_inside_duckdbs_read_of_a_shard_interrupts_and_quarantines_nothing(clean, tmp_path, monkeypatch):
    """A SIGTERM that lands while DuckDB reads a registered shard table in Python comes back from DuckDB as an
    InvalidInputException quoting the handler's exception (seen in a real `kill` of an ingest). It is the interrupt,
    not a bad shard: the ingest stops and the shard stays where it is (it used to be quarantined and the ingest went
    on, exit 0)."""
    from ssmscope.runs.store import queries
    from ssmscope.runs.store.db import IngestInterrupted

    db = tmp_path / "store.duckdb"
    root = copy_shards(clean, shard_dir_for(db))
    real = ingest_module._insert

    class Connection:  # the store's connection, except that the probe insert fails as the signal made it fail
        def __init__(self, con):
            self.con = con

        def execute(self, query, *args):
            if query == queries.INSERT_PROBE_ROWS:
                raise duckdb.InvalidInputException("Invalid Input Error: reading the schema of the object registered "
                                                   f"as '{queries.SHARD_VIEW}' failed: Terminated: ")
            return self.con.execute(query, *args)

        def __getattr__(self, name):
            return getattr(self.con, name)

    class Store:  # the ingest's store, seen through that connection
        def __init__(self, store):
            self.store, self.con = store, Connection(store.con)

        def __getattr__(self, name):
            return getattr(self.store, name)

    def interrupted(store, *args, **kw):
        return real(Store(store), *args, **kw)

    monkeypatch.setattr(ingest_module, "_insert", interrupted)
    before = sorted(p.name for p in list_shards(root))
    with pytest.raises(IngestInterrupted):
        ingest(db, root)
    assert sorted(p.name for p in list_shards(root)) == before
    assert not (root / QUARANTINE_DIR).exists() or not any((root / QUARANTINE_DIR).iterdir())
    monkeypatch.setattr(ingest_module, "_insert", real)
    assert len(ingest(db, root).loaded) == len(before) and counts(db) == clean.counts


# --- what a sweep survives ---------------------------------------------------------------------
def test_an_unwritable_failed_shard_does_not_stop_the_sweep(clean, tmp_path, monkeypatch):
    spec = parse_spec(tomllib.loads(HALF), "half")
    lost, kept = (cfg.run_id for cfg in spec.runs)
    faults.inject(monkeypatch, {lost: "task-raise"})

    def unwritable(task, *args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", f"{task.shard_root}/{task.run_id}")

    monkeypatch.setattr(sweep_module, "write_failed_shard", unwritable)
    db = tmp_path / "store.duckdb"
    report = run_sweep(spec, db, device="cpu", workers=1, retries=0)
    assert report.statuses == {"completed": 1, "failed": 1} and report.exit_code == 1  # a run failed
    assert "injected test fault" in report.failures[lost] and "could not be written" in report.unrecorded[lost]
    assert counts(db) == clean.only(kept)


class _LockAtStart:
    """A progress display that, when the runs start, has another process take the store for writing."""

    def __init__(self, db: Path):
        self.db, self.holder = db, None

    def start(self, total):
        self.holder = Holder(self.db, read_only=False)

    def begin_run(self, cfg): ...
    def step(self, run_id, step, total): ...
    def end_run(self, run_id, status): ...
    def stop(self): ...


def test_a_store_locked_at_the_end_keeps_the_shards_and_says_so(clean, tmp_path):
    db = tmp_path / "store.duckdb"
    progress = _LockAtStart(db)
    spec = parse_spec(tomllib.loads(HALF), "half")
    try:
        report = run_sweep(spec, db, device="cpu", workers=1, progress=progress, lock_wait_s=1, live_every=0)
    finally:
        progress.holder.close()
    assert report.statuses == {"completed": 2} and report.exit_code == 2
    assert "being written by another process" in report.ingest_error and "the shards stay in" in report.ingest_error
    assert "nothing trained is lost" in report.ingest_error
    assert counts(db)["runs"] == 0 and len(list_shards(shard_dir_for(db))) == 2
    ingest(db)
    assert counts(db) == clean.only(*half_ids())


class _BrokenCluster(Executor):
    name = "broken"

    def submit(self, tasks):
        self.tasks = tasks

    def poll(self, timeout, on_step):
        raise RuntimeError("the cluster went away")


def test_the_sweeps_own_error_is_raised_not_the_later_ingest_failure(clean, tmp_path):
    db = tmp_path / "store.duckdb"
    progress = _LockAtStart(db)
    try:
        with pytest.raises(RuntimeError, match="the cluster went away") as caught:
            run_sweep(load_spec(clean.spec), db, executor=_BrokenCluster(), progress=progress, lock_wait_s=0.5)
    finally:
        progress.holder.close()
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "also:" in notes and "being written by another process" in notes


def test_a_locked_store_fails_before_training(clean, tmp_path):
    db = tmp_path / "store.duckdb"
    ingest(db, tmp_path / "nothing")
    holder = Holder(db, read_only=True)
    try:
        with pytest.raises(StoreLocked, match="open for reading by PID"):
            run_sweep(load_spec(clean.spec), db, device="cpu", lock_wait_s=0.5)
    finally:
        holder.close()
    assert not list_shards(shard_dir_for(db))


def test_the_summary_counts_only_this_sweeps_runs(clean, tmp_path):
    db = tmp_path / "store.duckdb"
    others = [r for r in clean.per_run if r not in half_ids()]
    copy_shards(clean, shard_dir_for(db), others)  # another writer's runs in the same folder
    spec = tmp_path / "half.toml"
    spec.write_text(HALF)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "2 completed" in result.output and "ingested 2 of this sweep's runs (+2 of other writers)" in result.output
    assert counts(db) == clean.counts
