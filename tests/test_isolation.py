"""The test suite keeps out of the user's own folders: the cache (~/.cache/ssmscope) and the default store.

tests/conftest.py points SSMSCOPE_CACHE_DIR and XDG_CACHE_HOME at a temporary folder for the session and
fails any test that writes into the user's real cache folder (an audit hook sees the test process's writes);
these tests check both halves: every writer lands in the private folder, and the guard really fails a test
that writes into the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import USER_CACHE_DIR, USER_CACHE_WRITES, USER_PATH_VARS

from ssmscope.app import stores
from ssmscope.ssm.scan import compiled

TESTS = Path(__file__).resolve().parent


def test_every_cache_writer_uses_the_session_folder_not_the_users(private_user_paths):
    assert stores.cache_dir() == compiled.cache_dir() == private_user_paths
    assert private_user_paths != USER_CACHE_DIR
    assert not any(os.environ.get(name) for name in USER_PATH_VARS)
    stores.remember("/somewhere/ssmscope.duckdb")
    assert (private_user_paths / stores.RECENT_FILE).is_file()
    assert stores.load_recent()[0] == "/somewhere/ssmscope.duckdb"
    assert compiled.build().parent == private_user_paths  # the session's build, shared by later tests
    assert USER_CACHE_WRITES.active and not USER_CACHE_WRITES.seen


def test_the_guard_sees_every_kind_of_write_into_the_users_cache_and_nothing_else(tmp_path):
    """The audit hook's view, checked directly (it is switched off again before this test's teardown looks)."""
    import contextlib

    missing = USER_CACHE_DIR / "ssmscope-tests-no-such-folder"
    assert not missing.exists()
    target = missing / "sub" / "f.json"  # two missing levels: every attempt below fails, even os.mkdir
    attempts = [lambda: open(target, "w"), lambda: open(target, "a"), lambda: open(target, "r+"),
                lambda: os.open(target, os.O_WRONLY | os.O_CREAT), lambda: os.mkdir(target.parent),
                lambda: os.replace(tmp_path / "x", target), lambda: os.remove(target)]
    try:
        for attempt in attempts:
            with contextlib.suppress(OSError):  # its folder does not exist: each fails after its audit event
                attempt()
        with contextlib.suppress(OSError):
            open(USER_CACHE_DIR / "recent-stores.json").close()  # reading is fine
        (tmp_path / "elsewhere.json").write_text("{}")  # so is writing elsewhere
        seen = list(USER_CACHE_WRITES.seen)
    finally:
        USER_CACHE_WRITES.seen.clear()
    assert [s.split()[0] for s in seen] == ["open", "open", "open", "open", "os.mkdir", "os.rename", "os.remove"]
    assert all(s.endswith(str(target)) or s.endswith(str(target.parent)) for s in seen), seen
    assert not missing.exists()


INNER_TEST = """
from conftest import USER_CACHE_DIR

from ssmscope.app import stores


def test_writes_through_ssmscope():
    stores.remember("/a/ssmscope.duckdb")  # goes to the private folder: allowed


def test_writes_into_the_real_cache():
    USER_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (USER_CACHE_DIR / "recent-stores.json").write_text("[]")
"""


def test_a_test_that_writes_into_the_users_cache_fails(tmp_path):
    """Run a small suite with this conftest under a fake home: the test writing into its ~/.cache/ssmscope
    errors in its teardown, naming the file; the one writing through ssmscope passes."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("SSMSCOPE_CACHE_DIR", "PYTEST_ADDOPTS")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 passed, 1 error" in out, out  # the writing test itself passes; its teardown errors
    assert "wrote into the user's cache folder" in out and "recent-stores.json" in out, out
    assert sorted(p.name for p in (home / ".cache" / "ssmscope").iterdir()) == ["recent-stores.json"]
