"""Moving bad shards aside and removing stale temporaries: the only two ways files leave a shard folder.

Quarantine: ingest moves a shard it cannot load to `<shards>/.quarantine/<run_id>-<UTC time>/`
with a REASON.txt, under the run's publish lock; the run then has no shard, so the next sweep
reruns it. Stale temporaries: what writers killed mid-write left (`.tmp-<run_id>-<token>` and
its `.lock`, `.old` swaps, and the `.tmp-<run id>-<8 hex>`/`.old-<run id>-<8 hex>` names of
ssmscope before this protocol) are removed only by an explicit `ssmscope ingest --clean-stale`,
and only when older than a given age (default STALE_AFTER_S) and not locked by a live writer.
Both act only on what ssmscope wrote (runs.store.ownership): a user's `.old-backup` or `.tmp-notes`,
or any folder that is not a shard, is never moved or deleted.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ssmscope.runs.store.filelock import is_held
from ssmscope.runs.store.ownership import (
    QUARANTINE_DIR,
    TMP_PREFIX,
    check_shard_root,
    is_owned_shard,
    is_owned_temporary,
    temporary_base,
)

STALE_AFTER_S = 3600.0
"""Default age (1 hour) after which an unlocked temporary counts as left by a dead writer."""


def quarantine(shard_root: Path, run_id: str, reason: str) -> Path:
    """Move `<shards>/<run_id>` to `.quarantine/<run_id>-<UTC time>/` with REASON.txt; returns the new path.

    The caller holds the run's publish lock. Raises OSError when the folder cannot be moved, or is not a shard
    ssmscope wrote (runs.store.ownership: then nothing is moved)."""
    source = Path(shard_root) / run_id
    if not is_owned_shard(source):
        raise OSError(errno.EPERM, "not an ssmscope shard, left untouched", str(source))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = Path(shard_root) / QUARANTINE_DIR / f"{run_id}-{stamp}"
    target.parent.mkdir(exist_ok=True)
    os.rename(source, target)
    (target / "REASON.txt").write_text(
        f"run {run_id} was quarantined by ssmscope ingest at {stamp} on {platform.node()} (pid {os.getpid()}):\n"
        f"{reason}\nIts run has no shard now, so the next `ssmscope sweep` of its spec runs it again.\n")
    return target


@dataclass(frozen=True)
class Temporary:
    """One writer's leftovers: the temporary folder (and its `.old` swap), and the lock file naming its writer."""

    paths: tuple[Path, ...]
    lock: Path | None

    @property
    def name(self) -> str:
        return self.paths[0].name if self.paths else (self.lock.name if self.lock else "")

    def age_s(self, now: float) -> float:
        """Seconds since anything in it last changed."""
        latest = 0.0
        for path in (*self.paths, *([self.lock] if self.lock else [])):
            try:
                latest = max(latest, path.lstat().st_mtime)
                if path.is_dir():
                    latest = max([latest, *(p.lstat().st_mtime for p in path.iterdir())])
            except FileNotFoundError:
                continue
        return now - latest


def temporaries(shard_root: Path) -> list[Temporary]:
    """Every writer's leftovers in a shard folder, grouped by writer token: only entries named and shaped as
    ssmscope's temporaries (runs.store.ownership.is_owned_temporary)."""
    root = Path(shard_root)
    if not root.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for path in root.iterdir():
        base = temporary_base(path.name)
        if base is not None and is_owned_temporary(path):
            groups.setdefault(base, []).append(path)
    out = []
    for base, paths in sorted(groups.items()):
        lock = root / f"{base}.lock" if base.startswith(TMP_PREFIX) else None
        if lock is not None and not (lock.is_file() and is_owned_temporary(lock)):
            lock = None
        out.append(Temporary(tuple(sorted(p for p in paths if p.suffix != ".lock")), lock))
    return out


def stale_temporaries(shard_root: Path, older_than_s: float = STALE_AFTER_S) -> list[Temporary]:
    """Temporaries older than `older_than_s` whose writer holds no lock (it is gone)."""
    now = time.time()
    return [t for t in temporaries(shard_root)
            if t.age_s(now) > older_than_s and not (t.lock is not None and is_held(t.lock))]


def clean_stale(shard_root: Path, older_than_s: float = STALE_AFTER_S) -> list[str]:
    """Remove stale temporaries (see `stale_temporaries`); returns their names. Live writers' files stay. A folder
    of the user's files that holds no shard is refused first (ForeignFolder), as ingest refuses it."""
    check_shard_root(shard_root)
    removed = []
    for temp in stale_temporaries(shard_root, older_than_s):
        if temp.lock is not None and is_held(temp.lock):  # its writer came back to life between the checks
            continue
        for path in temp.paths:
            if not is_owned_temporary(path):  # changed since it was listed: no longer ours to remove
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if temp.lock is not None:
            temp.lock.unlink(missing_ok=True)
        removed.append(temp.name)
    return removed
