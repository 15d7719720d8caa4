"""ssmscope moves or deletes only what it wrote (runs.store.ownership), caused for real on folders of user files.

Every command that takes a shard folder — `ingest --shards`, $SSMSCOPE_SHARDS, `sweep --shards`,
`store.save(shards=)`, `ingest --clean-stale` — is pointed at a folder of a user's files (nested, hidden,
old, and named like ssmscope's own temporaries) and must refuse it in one line with every byte left as it
was; beside real shards the user's entries are named once and left alone, while ssmscope's own bad
shards are still quarantined and its own stale temporaries still cleaned. Also: the shard checks that
decide what loads (unknown or missing columns, duplicate probe keys) and a shard folder deleted mid-sweep.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_spec_toml
from typer.testing import CliRunner

import ssmscope
from ssmscope.runs.cli.main import app
from ssmscope.runs.store.db import counts, finished_run_ids, ingest, shard_dir_for
from ssmscope.runs.store.ownership import (
    SHARD_MARKER,
    ForeignFolder,
    check_shard_root,
    is_owned_shard,
    is_owned_temporary,
    survey,
)
from ssmscope.runs.store.shard_maintenance import clean_stale
from ssmscope.runs.store.shards import QUARANTINE_DIR, list_shards, write_shard, writer_token
from ssmscope.runs.sweeps.spec import load_spec
from ssmscope.runs.sweeps.sweep import run_sweep
from ssmscope.ssm.errors import ConfigError

TINY = tiny_spec_toml().replace("steps = 2", "steps = 1").replace("n_layers = 2", "n_layers = 1")
HOUR_AGO = time.time() - 3 * 3600


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    monkeypatch.delenv("SSMSCOPE_SHARDS", raising=False)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    """A clean 4-run sweep: its spec file, its store, the store's counts."""
    root = tmp_path_factory.mktemp("swept")
    spec = root / "tiny.toml"
    spec.write_text(TINY)
    db = root / "store.duckdb"
    assert run_sweep(load_spec(spec), db, device="cpu", workers=1).statuses == {"completed": 4}
    return spec, db, counts(db)


def user_tree(root: Path) -> Path:
    """A folder of a user's files: nested, hidden, old, and some named like ssmscope's own entries."""
    files = {
        "Documents/thesis/chapter1.tex": b"\\chapter{Intro}\n",
        "Documents/budget.xlsx": os.urandom(512),
        "projects/app/src/main.py": b"print('hi')\n",
        "photos/2024/beach.jpg": os.urandom(2048),
        "notes.txt": b"remember the milk\n",
        ".config/settings.toml": b"theme = 'dark'\n",
        ".old-backup/data.bin": os.urandom(256),  # named like an older ssmscope's temporary
        ".tmp-notes/todo.md": b"- write\n",  # ... like a temporary
        f".tmp-0123456789abcdef-{writer_token()}/mine.csv": b"a,b\n1,2\n",  # a writer's name, a user's content
        ".tmp-0123456789abcdef-deadbeef/runs.parquet.bak": b"not ours\n",
        "0123456789abcdef/mydata.csv": b"x\n1\n",  # a run-id name holding a user's file
        "results/runs.parquet": b"a user's own parquet? not even parquet\n",  # a shard file name, not a shard
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [*root.rglob("*"), root]:  # old: any age-based cleanup would pick them
        os.utime(path, (HOUR_AGO, HOUR_AGO), follow_symlinks=False)
    return root


def snapshot(root: Path) -> dict[str, tuple[str, bytes | None, float]]:
    """Every entry under `root`: kind, bytes of files, modification time (byte-for-byte comparison)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "dir" if path.is_dir() else "file"
        out[str(path.relative_to(root))] = (kind, path.read_bytes() if kind == "file" else None, st.st_mtime)
    return out


def one_error_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# --- a folder of the user's files is refused by every command, byte for byte ----------------------
def test_ownership_sorts_a_folder_into_shards_temporaries_machinery_and_the_users(swept, tmp_path):
    folder = user_tree(tmp_path / "mixed")
    _, db, _ = swept
    for shard in list_shards(shard_dir_for(db))[:2]:
        shutil.copytree(shard, folder / shard.name)
    real_tmp = folder / f".tmp-{'a' * 16}-{writer_token()}"
    real_tmp.mkdir()
    (real_tmp / "runs.parquet").write_bytes(b"half written")
    (folder / ".locks").mkdir()
    found = survey(folder)
    assert sorted(p.name for p in found.shards) == sorted(p.name for p in list_shards(shard_dir_for(db))[:2])
    assert [p.name for p in found.temporaries] == [real_tmp.name]
    assert [p.name for p in found.machinery] == [".locks"]
    assert sorted(p.name for p in found.foreign) == sorted(
        p.name for p in folder.iterdir() if p.name not in {real_tmp.name, ".locks"} and not is_owned_shard(p))
    assert len(found.foreign) == 11 and all(not is_owned_temporary(p) for p in found.foreign)


@pytest.mark.parametrize("how", ["ingest --shards", "SSMSCOPE_SHARDS", "sweep --shards", "ingest --clean-stale"])
def test_a_folder_of_user_files_is_refused_and_left_byte_for_byte(swept, tmp_path, monkeypatch, how):
    spec, _, _ = swept
    folder = user_tree(tmp_path / "home")
    before = snapshot(folder)
    db = tmp_path / "store.duckdb"
    args = {"ingest --shards": ["ingest", "--db", str(db), "--shards", str(folder)],
            "SSMSCOPE_SHARDS": ["ingest", "--db", str(db)],
            "sweep --shards": ["sweep", str(spec), "--db", str(db), "--shards", str(folder), "--device", "cpu",
                               "--workers", "1"],
            "ingest --clean-stale": ["ingest", "--db", str(db), "--shards", str(folder), "--clean-stale",
                                     "--older-than", "0"]}[how]
    if how == "SSMSCOPE_SHARDS":
        monkeypatch.setenv("SSMSCOPE_SHARDS", str(folder))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert f"{folder} is not a shard folder" in line and "nothing was moved" in line
    assert snapshot(folder) == before  # nothing moved, removed, written (no .locks, no .quarantine, no REASON.txt)
    assert not db.exists() or how == "sweep --shards"  # ingest refuses before it creates a store


def test_store_save_refuses_a_folder_of_user_files_before_writing(swept, tmp_path):
    _, db, _ = swept
    folder = user_tree(tmp_path / "home")
    before = snapshot(folder)
    frame = ssmscope.store.load(db)
    with pytest.raises(ForeignFolder, match="is not a shard folder"):
        ssmscope.store.save(frame, tmp_path / "other.duckdb", shards=folder)
    assert snapshot(folder) == before and not (tmp_path / "other.duckdb").exists()


def test_beside_real_shards_user_entries_are_named_once_and_left_alone(swept, tmp_path):
    _, db, clean = swept
    folder = user_tree(tmp_path / "shared")
    before = snapshot(folder)
    for shard in list_shards(shard_dir_for(db)):
        shutil.copytree(shard, folder / shard.name)
    bad = sorted(p.name for p in list_shards(folder))[0]
    (folder / bad / "probes.parquet").write_bytes(b"garbage")  # ssmscope's own shard, corrupt: quarantined
    stale = folder / f".tmp-{'b' * 16}-{writer_token()}"  # ssmscope's own stale temporary: cleaned
    stale.mkdir()
    (stale / "runs.parquet").write_bytes(b"half")
    os.utime(stale / "runs.parquet", (HOUR_AGO, HOUR_AGO))
    os.utime(stale, (HOUR_AGO, HOUR_AGO))
    result = CliRunner().invoke(app, ["ingest", "--db", str(tmp_path / "s.duckdb"), "--shards", str(folder),
                                      "--clean-stale", "--older-than", "60"])
    assert result.exit_code == 0, result.output
    assert "removed 1 stale temporary" in result.output and not stale.exists()
    assert "quarantined 1 bad shard(s)" in result.output and bad in result.output
    assert "11 entries in" in result.output and "not ssmscope's (left untouched)" in result.output
    assert counts(tmp_path / "s.duckdb")["runs"] == clean["runs"] - 1
    after = {k: v for k, v in snapshot(folder).items() if k.split("/")[0] in {p.split("/")[0] for p in before}}
    assert after == before  # every user entry byte for byte, mtimes included
    assert [p.name.split("-")[0] for p in (folder / QUARANTINE_DIR).iterdir()] == [bad]


def test_a_writer_never_swaps_out_a_folder_it_did_not_write(swept, tmp_path):
    _, db, _ = swept
    shard = list_shards(shard_dir_for(db))[0]
    row = pq.read_table(shard / "runs.parquet").to_pylist()[0]
    mine = tmp_path / "shards" / shard.name
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match="not an ssmscope shard"):
        write_shard(tmp_path / "shards", row, [], [])
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name.startswith(".tmp-")]


def test_published_shards_carry_the_marker_and_a_missing_or_empty_folder_is_fine(swept, tmp_path):
    _, db, _ = swept
    assert all((s / SHARD_MARKER).is_file() for s in list_shards(shard_dir_for(db)))
    assert check_shard_root(tmp_path / "absent").shards == []
    (tmp_path / "empty").mkdir()
    assert check_shard_root(tmp_path / "empty").foreign == []


def test_an_older_ssmscopes_shard_without_marker_still_loads(swept, tmp_path):
    _, db, clean = swept
    folder = tmp_path / "old"
    for shard in list_shards(shard_dir_for(db)):
        shutil.copytree(shard, folder / shard.name)
        (folder / shard.name / SHARD_MARKER).unlink()
    assert len(ingest(tmp_path / "old.duckdb", folder).loaded) == 4 and counts(tmp_path / "old.duckdb") == clean


# --- what a shard must hold to load, and resume --------------------------------------------------
def _copy(db: Path, dest: Path) -> list[str]:
    for shard in list_shards(shard_dir_for(db)):
        shutil.copytree(shard, dest / shard.name)
    return sorted(p.name for p in list_shards(dest))


def test_a_shard_of_only_unknown_columns_is_quarantined_and_resume_reruns_it(swept, tmp_path):
    spec, db, clean = swept
    store = tmp_path / "store.duckdb"
    ids = _copy(db, shard_dir_for(store))
    bad = ids[0]
    probes = pq.read_table(shard_dir_for(store) / bad / "probes.parquet")
    pq.write_table(probes.rename_columns([f"mystery_{i}" for i in range(probes.num_columns)]),
                   shard_dir_for(store) / bad / "probes.parquet")
    assert finished_run_ids(shard_dir_for(store), ids) == set(ids) - {bad}  # resume will rerun it
    report = ingest(store)
    assert report.quarantined == {bad: "probes.parquet has no column 'run_id'"} and not report.newer
    again = run_sweep(load_spec(spec), store, device="cpu", workers=1)
    assert again.skipped == 3 and again.statuses == {"completed": 1} and counts(store) == clean


def test_a_probe_file_without_its_value_columns_is_quarantined_not_loaded_as_nulls(swept, tmp_path):
    _, db, clean = swept
    folder = tmp_path / "shards"
    bad = _copy(db, folder)[1]
    probes = pq.read_table(folder / bad / "probes.parquet")
    pq.write_table(probes.drop_columns(["sumsq"]), folder / bad / "probes.parquet")
    report = ingest(tmp_path / "s.duckdb", folder)
    assert report.quarantined == {bad: "probes.parquet has no column 'sumsq'"}
    assert counts(tmp_path / "s.duckdb")["runs"] == clean["runs"] - 1


def test_duplicate_probe_keys_are_refused_from_a_shard_and_from_save(swept, tmp_path):
    _, db, _ = swept
    folder = tmp_path / "shards"
    bad = _copy(db, folder)[2]
    probes = pq.read_table(folder / bad / "probes.parquet")
    pq.write_table(pa.concat_tables([probes, probes.slice(0, 5)]), folder / bad / "probes.parquet")  # 5 twice
    report = ingest(tmp_path / "s.duckdb", folder)
    assert report.quarantined == {bad: "probes.parquet holds 5 probe key(s) more than once "
                                       "(run_id, step, layer, site, quantity, group must be unique)"}
    frame = ssmscope.store.load(db)
    other = tmp_path / "notebook.duckdb"
    with pytest.raises(ConfigError, match=f"holds {2 * frame.height} rows whose probe key"):
        ssmscope.store.save(pl.concat([frame, frame]), other)  # a notebook cell run twice
    assert not other.exists() and not shard_dir_for(other).exists()


# --- a shard folder deleted mid-sweep -------------------------------------------------------------
class DeleteFolderAfterFirstRun:
    """A progress sink that deletes the shard folder when the first run has finished (before any ingest)."""

    def __init__(self, folder: Path):
        self.folder, self.done = folder, 0

    def start(self, total): ...
    def begin_run(self, cfg): ...
    def step(self, run_id, step, total): ...
    def stop(self): ...

    def end_run(self, run_id, status):
        self.done += 1
        if self.done == 1:
            shutil.rmtree(self.folder)


def test_a_shard_folder_deleted_mid_sweep_names_the_runs_not_stored(swept, tmp_path):
    spec, _, clean = swept
    db = tmp_path / "store.duckdb"
    sink = DeleteFolderAfterFirstRun(shard_dir_for(db))
    report = run_sweep(load_spec(spec), db, device="cpu", workers=1, progress=sink, live_every=0,
                       live_interval_s=1e9)
    assert report.statuses == {"completed": 4} and len(report.lost) == 1 and report.exit_code == 2
    assert report.lost == report.ran[:1] and counts(db)["runs"] == clean["runs"] - 1
    line = report.lost_line()
    assert line.startswith("1 run(s) of this sweep trained but are not stored") and report.lost[0] in line
    again = run_sweep(load_spec(spec), db, device="cpu", workers=1)  # the rerun trains exactly that run
    assert again.skipped == 3 and again.statuses == {"completed": 1} and again.exit_code == 0
    assert counts(db) == clean


def test_clean_stale_removes_only_ssmscopes_own_temporaries(tmp_path):
    folder = user_tree(tmp_path / "shards")
    theirs = folder / f".tmp-{'c' * 16}-{writer_token()}"
    theirs.mkdir()
    (theirs / "probes.parquet").write_bytes(b"half")
    lock = folder / f"{theirs.name}.lock"
    lock.touch()
    shard = folder / ("d" * 16)  # one published shard, so the folder is a shard folder
    shard.mkdir()
    (shard / SHARD_MARKER).write_text("ssmscope shard\n")
    for p in (theirs / "probes.parquet", theirs, lock):
        os.utime(p, (HOUR_AGO, HOUR_AGO))
    before = {k: v for k, v in snapshot(folder).items() if not k.startswith((theirs.name, shard.name))}
    assert clean_stale(folder, 60) == [theirs.name]
    assert not theirs.exists() and not lock.exists()
    assert {k: v for k, v in snapshot(folder).items() if not k.startswith(shard.name)} == before
