"""What in a shard folder ssmscope wrote, and may therefore move or delete: everything else is the user's.

A shard folder (`<store>.shards/`, `--shards`, $SSMSCOPE_SHARDS, `store.save(shards=)`) may be any folder
a user names, their home included, so nothing in it is touched on the strength of its name alone:

* a **shard** is a folder holding the marker file `.ssmscope-shard` (every writer since this rule puts it
  in before publishing), or — a shard of an older ssmscope, without the marker — a folder holding nothing
  but shard files (`runs.parquet`, `probes.parquet`, `losses.parquet`) whose name is a run id hash
  (16 hex digits) or whose `runs.parquet` names the folder as its run;
* a **temporary** is an entry named as ssmscope's writers name theirs (`.tmp-<run>-<host>-<pid>-<8 hex>`
  with its `.lock` and `.old`, the write check `.tmp-write-check-<token>`, and the `.tmp-<run id>-<8 hex>` /
  `.old-<run id>-<8 hex>` of the first shard writer) that holds nothing but shard files;
* the **machinery**: `.locks/` (publish locks), `.quarantine/` (bad shards set aside), `.migrated-from-legacy`.

Anything else is **foreign**: ingest, quarantine, resume and `--clean-stale` never move, delete or write
into it; it is named in one warning line. A folder that holds foreign entries and no shard at all (`--shards ~`
by mistake) is refused before anything is written or moved (`check_shard_root`).
Imports the standard library and pyarrow only (the worker path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ssmscope.runs.store.errors import StoreError

SHARD_MARKER = ".ssmscope-shard"
"""The file every published shard carries: its presence is what makes a folder ssmscope's to move."""
MARKER_TEXT = "ssmscope shard\n"
"""The marker's first line (its remaining lines name the run and its writer)."""
SHARD_FILES = frozenset({"runs.parquet", "probes.parquet", "losses.parquet"})
"""The files of a shard (runs.store.shards.SHARD_TABLES)."""
TMP_PREFIX = ".tmp-"
LOCK_DIR = ".locks"
QUARANTINE_DIR = ".quarantine"
MIGRATED_MARKER = ".migrated-from-legacy"
MACHINERY = frozenset({LOCK_DIR, QUARANTINE_DIR, MIGRATED_MARKER})
"""Names in a shard folder that belong to the shard protocol itself (runs.store.shards, runs.store.layout)."""

RUN_ID_HASH = re.compile(r"[0-9a-f]{16}")
"""A run id as sweeps and coord_check make them (16 hex digits of a SHA-256)."""
_TOKEN = r"[A-Za-z0-9._]+-[0-9]+-[0-9a-f]{8}"
"""A writer token (runs.store.shards.writer_token): host, pid, 8 random hex digits."""
TEMPORARY_NAMES = (
    re.compile(rf"\.tmp-(?P<base>.+-{_TOKEN})(?P<suffix>\.lock|\.old)?"),  # a writer's temporary, lock, swap
    re.compile(r"\.tmp-(?P<base>[0-9a-f]{16}-[0-9a-f]{8})(?P<suffix>)"),  # the first shard writer's temporary
    re.compile(r"\.old-(?P<base>[0-9a-f]{16}-[0-9a-f]{8})(?P<suffix>)"),  # ... and its swapped-out shard
)
"""Full-match patterns of the names ssmscope's writers give their temporaries, old and new."""
WRITE_CHECK = "write-check-"
"""A sweep's write check of a folder: the regular file `.tmp-write-check-<token>`."""


def is_marked_shard(path: Path) -> bool:
    """Whether `path` is a folder carrying ssmscope's shard marker."""
    marker = Path(path) / SHARD_MARKER
    try:
        if not marker.is_file() or Path(path).is_symlink():
            return False
        with open(marker, "rb") as f:
            return f.read(len(MARKER_TEXT)) == MARKER_TEXT.encode()
    except OSError:
        return False


def _only_shard_files(path: Path) -> list[str] | None:
    """The entry names of a real folder when each is a shard file (or the marker), else None."""
    try:
        if path.is_symlink() or not path.is_dir():
            return None
        names = [p.name for p in path.iterdir()]
    except OSError:
        return None
    return names if set(names) <= SHARD_FILES | {SHARD_MARKER} else None


def _runs_file_names(path: Path) -> bool:
    """Whether `path/runs.parquet` is a one-row run table whose run id is the folder's name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path / "runs.parquet", columns=["run_id"])
    except (OSError, pa.ArrowException, KeyError):
        return False
    return table.num_rows == 1 and table.column("run_id")[0].as_py() == path.name


def is_owned_shard(path: Path) -> bool:
    """Whether `path` is a published shard ssmscope wrote (see the module docstring): only such a folder is
    ever loaded, quarantined or replaced."""
    path = Path(path)
    if path.name.startswith(".") or path.is_symlink() or not path.is_dir():
        return False
    if is_marked_shard(path):
        return True
    names = _only_shard_files(path)  # an older ssmscope's shard: shard files only, and named as a run
    if names is None:
        return False
    return bool(RUN_ID_HASH.fullmatch(path.name)) or ("runs.parquet" in names and _runs_file_names(path))


def temporary_base(name: str) -> str | None:
    """The writer's base name (`.tmp-<run>-<token>`, grouping a temporary with its lock and swap) when `name` is
    named like one of ssmscope's temporaries, else None."""
    for pattern in TEMPORARY_NAMES:
        found = pattern.fullmatch(name)
        if found:
            prefix = ".old-" if name.startswith(".old-") else TMP_PREFIX
            return prefix + found.group("base")
    return None


def is_owned_temporary(path: Path) -> bool:
    """Whether `path` is one of ssmscope's temporaries: named like one, and holding what one holds (a folder of
    shard files, or a plain file for a lock or a write check). A user's `.tmp-notes` or `.old-backup` is not."""
    path = Path(path)
    if temporary_base(path.name) is None or path.is_symlink():
        return False
    if path.name.endswith(".lock") or path.name.startswith(TMP_PREFIX + WRITE_CHECK):
        return path.is_file()
    return _only_shard_files(path) is not None


@dataclass(frozen=True)
class FolderSurvey:
    """A shard folder sorted into what ssmscope wrote and what it did not."""

    root: Path
    shards: list[Path] = field(default_factory=list)
    temporaries: list[Path] = field(default_factory=list)
    machinery: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)
    """Entries ssmscope did not write: never moved, deleted or written into."""

    def foreign_line(self, limit: int = 5) -> str | None:
        """One line naming the foreign entries (the first `limit`), or None when there are none."""
        if not self.foreign:
            return None
        names = sorted(p.name for p in self.foreign)
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        one = len(names) == 1
        return (f"{len(names)} entr{'y' if one else 'ies'} in {self.root} {'is' if one else 'are'} not ssmscope's "
                f"(left untouched): {', '.join(names[:limit])}{more}")


def survey(root: Path) -> FolderSurvey:
    """Sort every entry of a shard folder (a folder that does not exist holds nothing)."""
    root = Path(root)
    out = FolderSurvey(root)
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError:
        return out
    for path in entries:
        if path.name in MACHINERY and not path.is_symlink():
            out.machinery.append(path)
        elif is_owned_temporary(path):
            out.temporaries.append(path)
        elif is_owned_shard(path):
            out.shards.append(path)
        else:
            out.foreign.append(path)
    return out


class ForeignFolder(StoreError):
    """A folder given as a shard folder holds entries but no ssmscope shard: refused before anything moves."""


def check_shard_root(root: Path) -> FolderSurvey:
    """Survey a shard folder and refuse it (ForeignFolder, one line) when it holds entries none of which is
    ssmscope's shard: `--shards ~` or a project folder by mistake. A missing or empty folder, or one that holds
    only ssmscope's own entries, is fine; foreign entries beside shards are left alone (see `foreign_line`)."""
    found = survey(root)
    if found.foreign and not found.shards:
        names = sorted(p.name for p in found.foreign)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ForeignFolder(
            f"{root} is not a shard folder: it holds {len(names)} entr{'y' if len(names) == 1 else 'ies'} "
            f"ssmscope did not write ({shown}) and no ssmscope shard; nothing was moved. Use an empty or new folder "
            "for --shards / $SSMSCOPE_SHARDS / shards= (or leave it out for the store's own)")
    return found
