"""User mistakes end in one line, never a traceback, a hang, an OOM kill or silent acceptance (issue #24):
bounded numeric options, preset and base files with absurd numbers or bad bytes, unwritable --out, seeds out of
range, a Triton scan without CUDA, failed runs, special files as the store, nonsense names, an ingest that
waits to its end, the lock holder's name, and SIGTERM during an ingest. Each case is caused for real."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import duckdb
import faults
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from conftest import tiny_spec_toml
from typer.testing import CliRunner

from ssmscope.runs.cli.bounds import BOUNDS
from ssmscope.runs.cli.main import app
from ssmscope.runs.store import db as store_db
from ssmscope.runs.store.db import StoreError, StoreLocked, connect, counts, shard_dir_for
from ssmscope.runs.store.errors import program_name
from ssmscope.runs.store.shards import list_shards
from ssmscope.runs.sweeps.spec import load_spec
from ssmscope.runs.sweeps.sweep import run_sweep
from ssmscope.ssm import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPEC = tiny_spec_toml().replace("steps = 2", "steps = 1").replace("n_layers = 2", "n_layers = 1")  # 4 short runs


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    monkeypatch.delenv("SSMSCOPE_SHARDS", raising=False)
    faults.clear(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store of the 4-run tiny sweep with two seeds (8 runs)."""
    root = tmp_path_factory.mktemp("store")
    spec = root / "tiny.toml"
    spec.write_text(SPEC.replace("seeds = [0]", "seeds = [0, 1]"))
    db = root / "s.duckdb"
    report = run_sweep(load_spec(spec), db, device="cpu")
    assert report.statuses == {"completed": 8}
    return db


def one_line(args: list[str], code: int = 2) -> str:
    """Run the CLI; assert the exit code and a single line of output without a traceback; the line, unwrapped."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    out = result.output.strip()
    assert "Traceback" not in out and out.count("\n") == 0, out
    return " ".join(out.split())


def spec_file(tmp_path: Path, text: str = SPEC, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- 3. every numeric option is bounded ------------------------------------------------------------
def _numeric_options(command, prefix: str = "") -> list[tuple[str, str]]:
    """(command path, --option) of every int or float option of the CLI (typer's annotations, Optional too)."""
    if hasattr(command, "commands"):  # a group
        return [o for name, sub in command.commands.items() for o in _numeric_options(sub, f"{prefix} {name}")]
    return [(prefix.strip(), max(p.opts, key=len)) for p in command.params if p.param_type_name == "option"
            and any(t in (int, float) for t in (typing.get_args(p.type_descriptor.annotation)
                                                or (p.type_descriptor.annotation,)))]


def test_every_numeric_option_of_every_command_has_a_bound():
    options = _numeric_options(typer.main.get_command(app))
    assert len(options) >= 20  # slopes, transfer, sweep, ingest, app, param show, param fit
    missing = [(cmd, opt) for cmd, opt in options if opt not in BOUNDS]
    assert not missing, f"options without a range in runs/cli/bounds.py: {missing}"


@pytest.mark.parametrize(("args", "message"), [
    (["slopes", "--n-boot", "1000000000"], "--n-boot=1000000000; allowed: an integer from 0 to 100000 resamples"),
    (["slopes", "--seed", "-1"], "--seed=-1; allowed: an integer from 0 to 9223372036854775807"),
    (["transfer", "--n-boot", "-1"], "--n-boot=-1; allowed: an integer from 0 to 100000"),
    (["sweep", "SPEC", "--workers", "0"], "--workers=0; allowed: an integer from 1 to 1024"),
    (["sweep", "SPEC", "--workers", "100000"], "--workers=100000"),
    (["sweep", "SPEC", "--ingest-interval", "nan"], "--ingest-interval=nan; allowed: a finite number from 0 to 86400"),
    (["sweep", "SPEC", "--ingest-interval", "inf"], "--ingest-interval=inf"),
    (["sweep", "SPEC", "--ingest-every", "-1"], "--ingest-every=-1"),
    (["sweep", "SPEC", "--retries", "1000"], "--retries=1000"),
    (["sweep", "SPEC", "--cpus-per-task", "0"], "--cpus-per-task=0.0; allowed: a finite number from more than 0"),
    (["sweep", "SPEC", "--time-min", "0"], "--time-min=0"),
    (["ingest", "--wait", "nan"], "--wait=nan; allowed: a finite number from 0 to 86400 seconds"),
    (["ingest", "--wait", "1e12"], "--wait=1000000000000.0"),
    (["ingest", "--older-than", "inf"], "--older-than=inf"),
    (["app", "--port", "70000"], "--port=70000; allowed: an integer from 1 to 65535"),
    (["param", "show", "sp", "--d-model", "0"], "--d-model=0"),
    (["param", "show", "sp", "--n-layers", "100000"], "--n-layers=100000"),
    (["param", "show", "sp", "--lr", "nan"], "--lr=nan"),
    (["param", "fit", "mup-ssm", "--spec", "paper-figure", "--out", "OUT", "--n-boot", "1000000000"], "--n-boot="),
    (["param", "fit", "mup-ssm", "--spec", "paper-figure", "--out", "OUT", "--tolerance", "nan"], "--tolerance=nan"),
    (["param", "fit", "mup-ssm", "--spec", "paper-figure", "--out", "OUT", "--max-iter", "21"], "--max-iter=21"),
])
def test_out_of_range_numbers_are_one_line_and_nothing_is_created(tmp_path, args, message):
    db = tmp_path / "store" / "x.duckdb"
    args = [a.replace("SPEC", str(spec_file(tmp_path))).replace("OUT", str(tmp_path / "new.toml")) for a in args]
    if args[0] in ("slopes", "transfer", "sweep", "ingest", "app"):
        args += ["--db", str(db)]
    assert message in one_line(args)
    assert not db.parent.exists() and not (tmp_path / "new.toml").exists()


def test_a_bootstrap_beyond_this_machines_memory_is_refused_with_the_estimate(store, monkeypatch):
    from ssmscope.runs.analysis.slopes.bootstrap import bootstrap_bytes
    from ssmscope.runs.sweeps import memory

    assert bootstrap_bytes(100_000, 2) < 2**30 < bootstrap_bytes(100_000, 1000)  # grows with n_boot × seeds
    limit = bootstrap_bytes(1000, 2)  # a machine with room for the default bootstrap, not for 100000 resamples
    monkeypatch.setattr(memory, "available_ram", lambda: (limit, "MemAvailable in /proc/meminfo"))
    out = one_line(["slopes", "--db", str(store), "--n-boot", "100000", "--format", "csv"])
    assert f"--n-boot 100000 over 2 seeds needs about {memory.human(bootstrap_bytes(100_000, 2))}" in out
    assert f"more than the {memory.human(limit)} this machine has (MemAvailable in /proc/meminfo)" in out
    assert "lower --n-boot" in out
    result = CliRunner().invoke(app, ["slopes", "--db", str(store), "--n-boot", "100", "--format", "csv"])
    assert result.exit_code == 0, result.output  # a small bootstrap fits


# --- 7. preset and base files: finite, bounded numbers and UTF-8 -----------------------------------
def _preset_text(name: str = "mup-ssm") -> str:
    from importlib import resources

    return resources.files("ssmscope.ssm").joinpath("presets", f"{name}.toml").read_text("utf-8")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "9", "-8.5", "'1/0'", "99999999999999999999"])
@pytest.mark.parametrize("where", ["init", "lr"])
def test_absurd_exponents_are_one_line_in_param_show_and_before_any_run(tmp_path, value, where):
    old = {"init": 'init = {n_u = "-1/2"}', "lr": "lr = {sgd = {}, adam = {n_u = -1}}"}[where]
    new = {"init": f"init = {{n_u = {value}}}", "lr": f"lr = {{sgd = {{n_u = {value}}}, adam = {{n_u = -1}}}}"}[where]
    text = _preset_text()
    assert old in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new, 1))
    key = f"bad.toml: roles.in_proj.{where}" + (".sgd" if where == "lr" else "") + ".n_u="
    out = one_line(["param", "show", str(bad)])
    assert key in out and ("allowed: a finite number from -8 to 8" in out or "allowed: a number" in out)
    db = tmp_path / "store" / "x.duckdb"
    spec = spec_file(tmp_path, SPEC.replace('presets = ["sp", "mup-ssm"]', f'presets = ["sp", "{bad}"]'))
    assert key in one_line(["sweep", str(spec), "--db", str(db)])
    assert not db.parent.exists()  # nothing trained, nothing created


def test_the_largest_allowed_exponent_loads(tmp_path):
    good = tmp_path / "steep.toml"
    good.write_text(_preset_text().replace('init = {n_u = "-1/2"}', "init = {n_u = -8}", 1))
    result = CliRunner().invoke(app, ["param", "show", str(good)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("old", "new", "key"), [
    ("std = 0.02", "std = 1e308", "roles.embedding.std=1e+308; allowed: a finite number from -1000 to 1000"),
    ("std = 0.02", "std = nan", "roles.embedding.std=nan"),
    ('n_layer_power = "-1/2"', "n_layer_power = inf", "roles.out_proj.n_layer_power=inf"),
    ('fan_in_power = "-1/2"', "fan_in_power = -100", "fan_in_power=-100; allowed: a finite number from -8 to 8"),
])
def test_absurd_base_numbers_are_one_line(tmp_path, old, new, key):
    from importlib import resources

    text = resources.files("ssmscope.ssm").joinpath("presets", "bases", "mamba.toml").read_text("utf-8")
    assert old in text
    (tmp_path / "bad-base.toml").write_text(text.replace(old, new, 1))
    out = one_line(["param", "show", "sp", "--base", str(tmp_path / "bad-base.toml")])
    assert "bad-base.toml" in out and key in out


def test_files_that_are_not_utf8_are_one_line_naming_the_file(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes(_preset_text().replace('name = "mup-ssm"', 'name = "café"').encode("latin-1", "replace"))
    out = one_line(["param", "show", str(latin)])
    assert f"preset file {latin}: not UTF-8 text (byte 0xb5 at offset 2); save it as UTF-8" in out  # the µ
    db = tmp_path / "store" / "x.duckdb"
    spec = spec_file(tmp_path, SPEC.replace('presets = ["sp", "mup-ssm"]', f'presets = ["sp", "{latin}"]'))
    assert "grid.presets" in (line := one_line(["sweep", str(spec), "--db", str(db)])) and "not UTF-8" in line
    assert not db.parent.exists()
    # a base file, named by a preset or by --base
    from importlib import resources

    base = resources.files("ssmscope.ssm").joinpath("presets", "bases", "mamba.toml").read_text("utf-8")
    (tmp_path / "latin-base.toml").write_bytes(("# café\n" + base).encode("latin-1", "replace"))
    out = one_line(["param", "show", "sp", "--base", str(tmp_path / "latin-base.toml")])
    assert "latin-base.toml: not UTF-8 text (byte 0xe9" in out
    named = tmp_path / "named.toml"
    named.write_text(_preset_text("sp").replace('base = "mamba"', 'base = "latin-base.toml"'))
    assert "not UTF-8" in one_line(["param", "show", str(named)])
    spec = spec_file(tmp_path, SPEC.replace('presets = ["sp", "mup-ssm"]', f'presets = ["{named}"]'))
    assert "not UTF-8" in one_line(["sweep", str(spec), "--db", str(db)]) and not db.parent.exists()


# --- 10. --out ---------------------------------------------------------------------------------------
def _readonly_folder(tmp_path: Path):
    """A folder this process cannot write: chmod 555, or (as root, who ignores modes) a read-only tmpfs."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder, lambda: folder.chmod(0o755)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {done.stderr.decode().strip()}")
    return folder, lambda: subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("command", [["slopes", "--format", "csv"], ["transfer", "--format", "csv"]])
def test_out_to_a_missing_folder_a_folder_or_a_read_only_place_is_one_line(store, tmp_path, command):
    base = [*command, "--db", str(store), "--out"]
    out = one_line([*base, str(tmp_path / "missing" / "t.csv")])
    assert f"{tmp_path / 'missing'} does not exist; create the folder" in out
    assert f"--out {tmp_path} is a folder" in one_line([*base, str(tmp_path)])
    folder, undo = _readonly_folder(tmp_path)
    try:
        out = one_line([*base, str(folder / "t.csv")])
        assert f"this user cannot write {folder}" in out and not (folder / "t.csv").exists()
    finally:
        undo()


def test_param_fit_out_is_checked_before_any_run(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    args = ["param", "fit", "mup-ssm", "--spec", "paper-figure", "--db", str(tmp_path / "s" / "x.duckdb"), "--out"]
    assert "does not exist" in one_line([*args, str(tmp_path / "missing" / "solved.toml")])
    assert "is a folder" in one_line([*args, str(tmp_path / "dir.toml"), "--force"])
    folder, undo = _readonly_folder(tmp_path)
    try:
        assert "this user cannot write" in one_line([*args, str(folder / "solved.toml")])
    finally:
        undo()
    assert not (tmp_path / "s").exists()


def test_a_disk_full_while_writing_out_is_one_line(store, tmp_path, monkeypatch):
    from ssmscope.runs.analysis import export

    def full(frame, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export, "write_parquet", full)
    out = one_line(["slopes", "--db", str(store), "--n-boot", "0", "--out", str(tmp_path / "t.parquet")])
    assert f"cannot write {tmp_path / 't.parquet'}: the disk is full" in out


# --- 11. seeds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", ["[99999999999999999999]", "[-1]", "[0, 9223372036854775808]"])
def test_seeds_outside_int64_are_refused_by_the_spec(tmp_path, seeds):
    spec = spec_file(tmp_path, SPEC.replace("seeds = [0]", f"seeds = {seeds}"))
    with pytest.raises(ConfigError, match=r"grid\.seeds\[\d\]=.*allowed: an integer from 0 to 2\^63 - 1"):
        load_spec(spec)
    db = tmp_path / "store" / "x.duckdb"
    assert "grid.seeds" in one_line(["sweep", str(spec), "--db", str(db)]) and not db.parent.exists()


def test_the_largest_seed_is_accepted(tmp_path):
    spec = load_spec(spec_file(tmp_path, SPEC.replace("seeds = [0]", f"seeds = [{2**63 - 1}]")))
    assert {c.seed for c in spec.runs} == {2**63 - 1}


# --- 13. a Triton scan without CUDA, failed runs -----------------------------------------------------
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_triton_without_cuda_is_refused_before_any_run(tmp_path, device):
    db = tmp_path / "store" / "x.duckdb"
    out = one_line(["sweep", str(spec_file(tmp_path)), "--db", str(db), "--scan", "triton", "--device", device])
    assert "--scan triton needs a CUDA device" in out and "use --scan fast" in out and not db.parent.exists()


@pytest.mark.parametrize(("failing", "line"), [
    ("all", "all 4 runs this sweep trained failed"),
    ("sp", "2 of 4 runs this sweep trained failed"),
])
def test_failed_runs_exit_1_with_their_count(tmp_path, monkeypatch, failing, line):
    spec = spec_file(tmp_path)
    ids = [c.run_id for c in load_spec(spec).runs if failing == "all" or c.preset == failing]
    faults.inject(monkeypatch, dict.fromkeys(ids, "raise"))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--db", str(tmp_path / "x.duckdb"), "--retries", "0",
                                      "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0 and line in " ".join(result.stderr.split())
    assert "rerun the same command to retry the failed ones" in " ".join(result.stderr.split())


# --- 14. a FIFO, a device or a folder as the store ---------------------------------------------------
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SSMSCOPE_SHARDS", None)
    return subprocess.run([sys.executable, "-m", "ssmscope.runs.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_fifo_as_the_store_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "store.duckdb"
    os.mkfifo(fifo)
    spec = spec_file(tmp_path)
    for args in (["ingest"], ["slopes"], ["transfer"], ["sweep", str(spec)]):
        done = _cli([*args, "--db", str(fifo)], tmp_path)  # a hang fails by the timeout
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
        assert f"{fifo} is a FIFO (named pipe), not a store file" in " ".join(done.stderr.split())
    assert not list(tmp_path.glob("*.shards"))
    with pytest.raises(StoreError, match="is a FIFO"):
        connect(fifo, read_only=True)


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_folder_or_a_device_as_the_store_is_one_line(tmp_path, kind):
    path = tmp_path if kind == "folder" else Path("/dev/null")
    what = "a folder" if kind == "folder" else "a character device"
    assert f"is {what}, not a store file" in one_line(["ingest", "--db", str(path)])
    assert f"is {what}, not a store file" in one_line(["slopes", "--db", str(path)])


def test_the_dashboards_store_picker_refuses_a_fifo(tmp_path):
    from ssmscope.app.stores import check_store_path

    fifo = tmp_path / "pipe.duckdb"
    os.mkfifo(fifo)
    path, problem = check_store_path(str(fifo))
    assert path is None and f"{fifo} is a FIFO (named pipe), not a store file" in problem


# --- 16. accepted nonsense ---------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "message"), [
    ("42", "sweep.name=42; allowed: a non-empty string"),
    ('""', "sweep.name=''; allowed: a non-empty string"),
    ('"  "', "sweep.name=' '; allowed: a non-empty string"),  # one_line() joins whitespace
])
def test_a_spec_name_must_be_a_non_empty_string(tmp_path, name, message):
    spec = spec_file(tmp_path, SPEC.replace('name = "tiny"', f"name = {name}"))
    db = tmp_path / "store" / "x.duckdb"
    assert message in one_line(["sweep", str(spec), "--db", str(db)]) and not db.parent.exists()


def test_ingest_into_a_store_with_no_shards_anywhere_creates_nothing(tmp_path):
    db = tmp_path / "typo.duckdb"
    out = one_line(["ingest", "--db", str(db)])
    assert f"nothing to ingest: the store {db} does not exist and neither does its shard folder" in out
    assert not db.exists() and not shard_dir_for(db).exists()
    shard_dir_for(db).mkdir()  # a store's own (empty) shard folder: ingest creates the store, as a sweep would
    result = CliRunner().invoke(app, ["ingest", "--db", str(db)])
    assert result.exit_code == 0 and db.exists(), result.output


# --- 9. ingest waits to its end; the holder is named by what it does ----------------------------------
class Holder:
    """Another process holding the store for writing, started as `argv` (a script) or as plain Python."""

    def __init__(self, db: Path, argv: list[str] | None = None):
        code = ("import sys, duckdb; con = duckdb.connect(sys.argv[sys.argv.index('--db') + 1]); "
                "print('ready', flush=True); sys.stdin.read()")
        cmd = argv or [sys.executable, "-c", code, "--db", str(db)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_ingest_honours_wait_for_its_final_count(store, tmp_path, monkeypatch):
    """The store is taken by another writer between the load and the count (for 2 s): --wait 30 covers the
    count too; --wait 0 says who holds it, in one line."""
    db = tmp_path / "x.duckdb"
    shutil.copytree(shard_dir_for(store), shard_dir_for(db))
    real = store_db.ingest
    holders: list[Holder] = []

    def then_taken(*args, **kw):
        report = real(*args, **kw)
        holders.append(Holder(db))
        threading.Timer(2.0, holders[-1].close).start()
        return report

    monkeypatch.setattr(store_db, "ingest", then_taken)
    result = CliRunner().invoke(app, ["ingest", "--db", str(db), "--wait", "30"])
    assert result.exit_code == 0, result.output
    assert "waiting up to 30 s" in result.output and "ingested 8 new" in result.output
    assert "8 runs" in result.output
    holders[-1].proc.wait(timeout=30)
    out = one_line(["ingest", "--db", str(db), "--wait", "0"])
    assert "being written by another process" in out
    holders[-1].proc.wait(timeout=30)


@pytest.mark.parametrize(("words", "named"), [
    (["sweep", "spec.toml", "--ingest-every", "8", "--ingest-interval", "30"], "ssmscope sweep"),
    (["ingest", "--wait", "60"], "ssmscope ingest"),
])
def test_the_lock_holder_is_named_by_its_subcommand(tmp_path, words, named):
    script = tmp_path / "ssmscope"  # a process whose command line is `python …/ssmscope <words> --db X`
    script.write_text("import sys, duckdb\ncon = duckdb.connect(sys.argv[sys.argv.index('--db') + 1])\n"
                      "print('ready', flush=True)\nsys.stdin.read()\n")
    db = tmp_path / "x.duckdb"
    holder = Holder(db, [sys.executable, str(script), *words, "--db", str(db)])
    try:
        with pytest.raises(StoreLocked) as info:
            connect(db)
        assert f"PID {holder.proc.pid}, {named})" in str(info.value)
    finally:
        holder.close()
    assert program_name(["python", "-m", "ssmscope.runs.cli.main", "sweep", "s.toml", "--ingest-every", "8"]) \
        == "ssmscope sweep"
    assert program_name(["python", "-m", "streamlit", "run", "main.py", "--", "--db", "/x/ssmscope"]) \
        == "the dashboard (ssmscope app)"


# --- 15. SIGTERM during an ingest ----------------------------------------------------------------------
def _many_shards(store: Path, dest: Path, n: int) -> Path:
    """`n` published shards: one shard of the store, copied under new run ids."""
    shard = list_shards(shard_dir_for(store))[0]
    tables = {f.name: pq.read_table(f) for f in shard.glob("*.parquet")}
    dest.mkdir(parents=True)
    for i in range(n):
        run_id = f"{i:016x}"
        (dest / run_id).mkdir()
        for name, table in tables.items():
            col = table.column_names.index("run_id")
            table = table.set_column(col, "run_id", pa.array([run_id] * table.num_rows, table.schema.field(col).type))
            pq.write_table(table, dest / run_id / name)
    return dest


def test_sigterm_stops_an_ingest_in_one_line_with_exit_143(store, tmp_path):
    db = tmp_path / "x.duckdb"
    _many_shards(store, shard_dir_for(db), 300)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SSMSCOPE_SHARDS", None)
    proc = subprocess.Popen([sys.executable, "-m", "ssmscope.runs.cli.main", "ingest", "--db", str(db)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not db.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the loading
    assert proc.poll() is None, "the ingest finished before it could be stopped: give it more shards"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, (stdout, stderr)
    assert "Traceback" not in stderr and stderr.strip().count("\n") == 0, stderr
    assert "ingest interrupted" in stderr and "rerun `ssmscope ingest --db" in " ".join(stderr.split())
    loaded = duckdb.connect(str(db), read_only=True).execute("SELECT count(*) FROM runs").fetchone()[0]
    assert loaded < 300  # stopped part-way (the line says how many)
    result = CliRunner().invoke(app, ["ingest", "--db", str(db)])
    assert result.exit_code == 0 and counts(db)["runs"] == 300, result.output



@pytest.mark.parametrize("signalled", [True, False])
def test_a_store_error_after_sigterm_is_the_interrupt(tmp_path, monkeypatch, signalled):
    """A SIGTERM between two statements of a shard's transaction reaches the ingest as DuckDB's "transaction is
    aborted" (the interrupt is replaced by it): after a stop signal that is the interrupt, exit 143; without
    one it stays a store error, exit 2. (Seen in about 1 run of 5 of the SIGTERM test above.)"""
    shard_dir_for(tmp_path / "x.duckdb").mkdir()

    def aborted(*args, **kw):
        if signalled:
            try:
                signal.raise_signal(signal.SIGTERM)
            except KeyboardInterrupt:
                pass  # what DuckDB's cleanup does to it
        raise StoreError("cannot write the store x.duckdb: TransactionContext Error: Current transaction is aborted")

    monkeypatch.setattr(store_db, "ingest", aborted)
    out = one_line(["ingest", "--db", str(tmp_path / "x.duckdb")], code=143 if signalled else 2)
    assert ("ingest interrupted" in out) == signalled and ("transaction is aborted" in out) != signalled
