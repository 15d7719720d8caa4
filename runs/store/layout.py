"""Where a store's shards live: a folder named after the store's own file, so two stores never mix.

The store `<dir>/<name>` (e.g. ssmscope-data/ssmscope.duckdb) keeps its shards in
`<dir>/<name>.shards/`; `--shards` or $SSMSCOPE_SHARDS override it (a cluster's shared folder).

Migration of the layout before this one, where every store of a folder shared `<dir>/shards`:
the first sweep or ingest of a store whose own folder has no migration marker links (hard links;
copies across filesystems) legacy shards into its folder, each published atomically:
  * every legacy shard, when this store is the only DuckDB file in the folder (it wrote them all,
    including runs never ingested);
  * otherwise only the shards whose run this store already holds — the rest stay, and the one
    line says how many (`ssmscope ingest --shards <dir>/shards --db …` loads them on purpose).
The legacy folder is left as it was (other stores may still claim from it); the marker
`.migrated-from-legacy` in the store's folder records what was done, so it happens once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ssmscope.runs.store.ownership import MIGRATED_MARKER, TMP_PREFIX
from ssmscope.runs.store.shards import list_shards, writer_token

__all__ = ["LEGACY_SHARDS", "MIGRATED_MARKER", "SHARDS_SUFFIX", "Migration", "is_duckdb_file", "migrate_legacy",
           "resolve_shard_dir", "shard_dir_for"]

SHARDS_SUFFIX = ".shards"
LEGACY_SHARDS = "shards"
DUCKDB_MAGIC = (8, b"DUCK")
"""Offset and bytes that mark a DuckDB database file."""


def shard_dir_for(db_path: Path) -> Path:
    """The store's shard folder: $SSMSCOPE_SHARDS, else `<db dir>/<db file name>.shards`."""
    env = os.environ.get("SSMSCOPE_SHARDS")
    if env:
        return Path(env)
    db_path = Path(db_path)
    return db_path.parent / f"{db_path.name}{SHARDS_SUFFIX}"


@dataclass(frozen=True)
class Migration:
    legacy: Path
    linked: int
    left: int

    def describe(self) -> str:
        left = (f"; {self.left} left there (not this store's runs: "
                f"`ssmscope ingest --shards {self.legacy}` loads them on purpose)") if self.left else ""
        return f"moved to the per-store shard layout: {self.linked} shard(s) linked from {self.legacy}{left}"


def resolve_shard_dir(db_path: Path, shard_root: Path | None) -> tuple[Path, Migration | None]:
    """The shard folder a sweep or ingest uses, migrating the legacy layout into the store's own folder
    when the folder is the default one (not `--shards` nor $SSMSCOPE_SHARDS)."""
    if shard_root is not None:
        return Path(shard_root), None
    own = shard_dir_for(db_path)
    if os.environ.get("SSMSCOPE_SHARDS"):
        return own, None
    return own, migrate_legacy(Path(db_path), own)


def is_duckdb_file(path: Path) -> bool:
    offset, magic = DUCKDB_MAGIC
    try:
        with open(path, "rb") as f:
            return f.read(offset + len(magic))[offset:] == magic
    except OSError:
        return False


def _runs_in(db_path: Path) -> set[str] | None:
    """Run ids the store holds (empty when it does not exist); None when it cannot be read now (locked)."""
    if not db_path.exists():
        return set()
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error:
        return None
    try:
        return {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
    except duckdb.Error:  # not an ssmscope store (yet): it holds no runs
        return set()
    finally:
        con.close()


def migrate_legacy(db_path: Path, own: Path) -> Migration | None:
    """Link this store's legacy shards (`<db dir>/shards`) into `own`; None when there is nothing to do."""
    legacy = db_path.parent / LEGACY_SHARDS
    if not legacy.is_dir() or legacy.resolve() == own.resolve() or (own / MIGRATED_MARKER).exists():
        return None
    others = [p for p in db_path.parent.iterdir() if p != db_path and p.is_file() and is_duckdb_file(p)]
    shards = list_shards(legacy)
    if others:
        held = _runs_in(db_path)
        if held is None:  # the store is locked right now: migrate on a later open
            return None
        claimed = [s for s in shards if s.name in held]
    else:
        claimed = shards
    own.mkdir(parents=True, exist_ok=True)
    linked = sum(_link_shard(s, own) for s in claimed)
    (own / MIGRATED_MARKER).write_text(
        f"from {legacy}: {linked} shard(s) linked, {len(shards) - len(claimed)} left "
        f"({'this store was the only one in its folder' if not others else 'other stores share the folder'})\n")
    return Migration(legacy, linked, len(shards) - len(claimed))


def _link_shard(shard: Path, own: Path) -> bool:
    """Publish a legacy shard in `own` (hard links, else copies) with one rename; False if already there."""
    final = own / shard.name
    if final.exists():
        return False
    tmp = own / f"{TMP_PREFIX}{shard.name}-{writer_token()}"
    tmp.mkdir()
    try:
        for f in shard.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and final.exists():  # a writer published this run meanwhile: keep theirs
            return False
        raise
    return True
