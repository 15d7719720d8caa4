"""The store picker's memory and checks: recently opened stores, and whether a path is a store.

Recent stores are kept in a small JSON list (RECENT_FILE under $SSMSCOPE_CACHE_DIR, else
$XDG_CACHE_HOME/ssmscope, else ~/.cache/ssmscope), newest first, at most MAX_RECENT. The list is
written atomically (temporary file, then rename); when the cache folder cannot be written (a
read-only home) the picker still works for the session and says nothing. No Streamlit here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import duckdb

from ssmscope.runs.store import db as store
from ssmscope.runs.store.connection import special_file

RECENT_FILE = "recent-stores.json"
MAX_RECENT = 8
STORE_FILE = "ssmscope.duckdb"
"""The file a store folder holds (what `--db` defaults to inside ./ssmscope-data)."""


def cache_dir() -> Path:
    """Where the dashboard keeps its small state files."""
    if os.environ.get("SSMSCOPE_CACHE_DIR"):
        return Path(os.environ["SSMSCOPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ssmscope"


def load_recent() -> list[str]:
    """The remembered stores, newest first ([] when there is no list or it is unreadable)."""
    try:
        data = json.loads((cache_dir() / RECENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [p for p in data if isinstance(p, str)][:MAX_RECENT] if isinstance(data, list) else []


def remember(path: str | Path, recent: list[str] | None = None) -> list[str]:
    """Put `path` first in the recent list and save it (best effort); returns the new list."""
    entries = [str(path), *(p for p in (load_recent() if recent is None else recent) if p != str(path))]
    entries = entries[:MAX_RECENT]
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".recent-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(entries, out, indent=1)
        os.replace(tmp, folder / RECENT_FILE)
    except OSError:
        pass  # a read-only or full cache folder: the list lives for this session only
    return entries


def check_store_path(text: str) -> tuple[Path | None, str | None]:
    """(the store file, None) when `text` names an ssmscope store, else (None, what is wrong and what to do).

    A folder is accepted when it holds STORE_FILE. A store that a sweep is writing right now counts as a
    store (the dashboard shows it once the ingest finishes).
    """
    text = text.strip()
    if not text:
        return None, "give the path of a store (a .duckdb file, e.g. ssmscope-data/ssmscope.duckdb)"
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / STORE_FILE).is_file():
            return None, f"{path} is a folder without {STORE_FILE}: give the store's .duckdb file"
        path = path / STORE_FILE
    if not path.exists():
        return None, f"no file at {path}: check the path, or fill a new store with `ssmscope sweep smoke --db {path}`"
    kind = special_file(path)
    if kind is not None:  # a FIFO would block the page forever when opened
        return None, f"{path} is {kind}, not a store file: give the store's .duckdb file"
    try:
        store.counts(path)
    except (store.StoreError, duckdb.Error) as exc:
        text = str(exc)
        if "being written" in text or "lock" in text.lower():
            return path.resolve(), None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return None, f"{path} cannot be opened as an ssmscope store: {first}"
    return path.resolve(), None
