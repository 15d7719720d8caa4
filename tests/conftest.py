"""Shared fixtures: user-level paths kept out of the tests, deterministic random scan inputs, and the tiny
sweep spec the sweep tests run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# --- user-level paths ------------------------------------------------------------------------------
# Every folder ssmscope writes outside a run's own store is under its cache folder: the dashboard's
# recent-stores list (app/stores.py) and the compiled scan's built libraries (ssm/scan/compiled.py), both
# at $SSMSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/ssmscope, else ~/.cache/ssmscope. The user's real one is
# computed here, at import, before any fixture changes the environment.
USER_CACHE_DIR = (Path(os.environ["SSMSCOPE_CACHE_DIR"]) if os.environ.get("SSMSCOPE_CACHE_DIR") else
                  Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssmscope")
USER_PATH_VARS = ("SSMSCOPE_DB", "SSMSCOPE_SHARDS")
"""Variables naming a user's own store: a test that forgets --db must not read or fill it."""


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# Audit events (sys.addaudithook) that change a file system path, and which of their arguments are paths.
_WRITE_EVENTS = {"os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
                 "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,), "os.chmod": (0,),
                 "shutil.copyfile": (1,), "shutil.rmtree": (0,)}


class UserCacheWrites:
    """Paths under USER_CACHE_DIR that this process opened for writing or changed, seen by an audit hook.

    An audit hook sees this test process's own writes only, so another program using the real cache at the same
    time (the user's dashboard, another checkout's test suite) cannot fail a test here. Processes a test starts
    inherit the private cache variables instead (private_user_paths)."""

    def __init__(self, folder: Path) -> None:
        self.roots = tuple({str(folder), str(folder.resolve())})
        self.seen: list[str] = []
        self.active = False
        sys.addaudithook(self._hook)  # cannot be removed: it only records while `active`

    def _inside(self, path: object) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            text = os.path.abspath(os.fsdecode(path))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return text if any(text == r or text.startswith(r + os.sep) for r in self.roots) else None

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & WRITE_FLAGS))
            paths = [path] if writing else []
        else:
            paths = [args[i] for i in _WRITE_EVENTS.get(event, ()) if i < len(args)]
        for p in paths:
            inside = self._inside(p)
            if inside is not None:
                self.seen.append(f"{event} {inside}")


USER_CACHE_WRITES = UserCacheWrites(USER_CACHE_DIR)


@pytest.fixture(scope="session", autouse=True)
def private_user_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the cache folder (SSMSCOPE_CACHE_DIR and XDG_CACHE_HOME) at one temporary folder for the whole
    session, and unset the variables that name a user's store.

    Session-wide, so the compiled scan is built once per test session and shared by every test (and by the
    sweep workers, which inherit the environment), not once per test; tests that need an empty cache set
    their own SSMSCOPE_CACHE_DIR on top."""
    root = tmp_path_factory.mktemp("user-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root))
        mp.setenv("SSMSCOPE_CACHE_DIR", str(root / "ssmscope"))
        for name in USER_PATH_VARS:
            mp.delenv(name, raising=False)
        yield root / "ssmscope"


@pytest.fixture(autouse=True)
def user_cache_untouched(private_user_paths: Path) -> Iterator[None]:
    """Fail (in teardown) the test that wrote into the user's real cache folder (~/.cache/ssmscope)."""
    USER_CACHE_WRITES.seen.clear()
    USER_CACHE_WRITES.active = True
    try:
        yield
    finally:
        USER_CACHE_WRITES.active = False
    written = list(dict.fromkeys(USER_CACHE_WRITES.seen))
    assert not written, f"the test wrote into the user's cache folder {USER_CACHE_DIR}: {written}"


def make_scan_inputs(batch: int, length: int, ed: int, n: int, dtype: torch.dtype, seed: int = 0,
                     dt_shift: float = -2.0) -> list[torch.Tensor]:
    """(u, dt, A, B, C, D, dt_bias) with Mamba-like magnitudes; A = −(n+1) perturbed."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u = r(batch, length, ed)
    dt = r(batch, length, ed) * 0.5
    A = -(torch.arange(1, n + 1, dtype=torch.float64).repeat(ed, 1) * torch.exp(0.1 * r(ed, n)))
    B, C = r(batch, length, n), r(batch, length, n)
    D, dt_bias = r(ed), r(ed) * 0.3 + dt_shift
    return [t.to(dtype) for t in (u, dt, A, B, C, D, dt_bias)]


@pytest.fixture
def scan_inputs():
    return make_scan_inputs


def tiny_spec_toml(name: str = "tiny", seq_len: int = 8, widths: tuple[int, ...] = (16, 32)) -> str:
    """A 4-run sweep spec (2 widths × sp, mup-ssm; ZOH, Adam, 2 steps, 2 layers) that trains in seconds."""
    return f"""
[sweep]
name = "{name}"
[grid]
widths = [{", ".join(str(w) for w in widths)}]
presets = ["sp", "mup-ssm"]
discretizations = ["zoh"]
optimizers = ["adam"]
lrs = [0.01]
seeds = [0]
[train]
steps = 2
batch = 2
seq_len = {seq_len}
n_layers = 2
"""
