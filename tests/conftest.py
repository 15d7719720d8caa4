"""Shared fixtures: user-level paths kept out of the tests, deterministic random scan inputs, and the tiny
sweep spec the sweep tests run."""

from __future__ import annotations

import os
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


def cache_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """name → (size, mtime in ns) of everything under `folder` ({} when it does not exist)."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.rglob("*"):
        try:
            st = path.lstat()
        except OSError:  # removed while listing
            continue
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


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
    """Fail the test that wrote into the user's real cache folder (~/.cache/ssmscope)."""
    before = cache_snapshot(USER_CACHE_DIR)
    yield
    after = cache_snapshot(USER_CACHE_DIR)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the test wrote into the user's cache folder {USER_CACHE_DIR}: {changed}"



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
