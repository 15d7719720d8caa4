"""Advisory file locks (flock) for the shard protocol: who is writing what, known without deleting anything.

A writer holds a lock on a small file beside what it writes for as long as it writes it; the lock
dies with the process, so a free lock on an old temporary means its writer is gone. On Linux,
flock over NFS is carried by POSIX byte-range locks and so works across nodes. Filesystems without
locks (some FUSE mounts) and folders this process may not write make `locked` yield False: the
block then runs unlocked, which the protocol tolerates (a reader retries what vanished under it).
Standard library only (the worker path).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NO_LOCKING = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.EACCES, errno.EPERM,
                        errno.EROFS})
"""errno values meaning "no lock here" (unsupported, or a folder we may not write): run unlocked."""
RETRY_S = 0.02


def _open(path: Path, create: bool) -> int | None:
    """A descriptor to lock, or None when the file (or its folder) is missing or cannot be opened for locking."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in NO_LOCKING:
            return None
        raise


def _acquire(fd: int, exclusive: bool, timeout_s: float | None) -> bool:
    """Lock `fd`; False when the filesystem has no locks. TimeoutError after `timeout_s` (None: wait)."""
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, op)
            return True
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"lock held by another process after {timeout_s:.0f} s") from None
            time.sleep(RETRY_S)
        except OSError as exc:
            if exc.errno in NO_LOCKING:
                return False
            raise


@contextmanager
def locked(path: Path, *, exclusive: bool = True, timeout_s: float | None = None) -> Iterator[bool]:
    """Hold a lock on `path` (created if missing) for the block; yields whether a lock is really held."""
    fd = _open(Path(path), create=True)
    if fd is None:
        yield False
        return
    try:
        yield _acquire(fd, exclusive, timeout_s)
    finally:
        os.close(fd)  # releases the lock


class HeldLock:
    """A lock taken now and released by `release()` (for locks that outlive one block)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = _open(self.path, create=True)
        self.held = self.fd is not None and _acquire(self.fd, True, 0)

    def release(self, unlink: bool = False) -> None:
        """Give the lock up; `unlink` first removes the lock file (only its holder ever does)."""
        if self.fd is None:
            return
        if unlink:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = None


def is_held(path: Path) -> bool:
    """Whether a live process holds a lock on `path` (False when the file is missing or locks are unsupported)."""
    fd = _open(Path(path), create=False)
    if fd is None:
        return False
    try:
        _acquire(fd, True, 0)  # taken (or no locks here): nobody holds it
        return False
    except TimeoutError:
        return True
    finally:
        os.close(fd)
