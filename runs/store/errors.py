"""Storage faults as one line: which file, what happened, and the fix.

Every fault of the disk or the store — a full disk (ENOSPC), a quota (EDQUOT), a read-only
filesystem (EROFS), a folder this user may not write (EACCES, EPERM), a failing disk (EIO), the
store's lock held by a reader or a writer, a query interrupted by a signal — becomes a StoreError
whose message names the file and what to do; the CLI prints it as one line with exit code 2.
DuckDB reports OS errors as text ('Could not write file "…": No space left on device'), so causes
are matched by errno for Python's errors and by their strerror text for DuckDB's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ssmscope.ssm.errors import ConfigError


class StoreError(ConfigError):
    """The store or a shard folder cannot be used; the message names the file and the fix."""


class StoreLocked(StoreError):
    """Another process holds the store's lock; `holder` says who (reader or writer, pid, program)."""

    def __init__(self, message: str, holder: LockHolder | None):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Cause:
    errno: int
    text: str
    """What the OS calls it (strerror): how DuckDB's messages name it."""
    what: str
    fix: str


CAUSES = (
    Cause(errno.ENOSPC, "No space left on device", "the disk is full",
          "free space there, or put the store elsewhere (--db) or the shards (--shards), then rerun"),
    Cause(errno.EDQUOT, "Disk quota exceeded", "the disk quota is exhausted",
          "free space within the quota, or use another folder (--db / --shards), then rerun"),
    Cause(errno.EROFS, "Read-only file system", "the filesystem is mounted read-only",
          "use a folder on a writable filesystem (--db / --shards)"),
    Cause(errno.EACCES, "Permission denied", "this user lacks the permission",
          "give this user access to the folder (chmod / chown), or use another one (--db / --shards)"),
    Cause(errno.EPERM, "Operation not permitted", "the operation is not permitted there",
          "give this user access to the folder, or use another one (--db / --shards)"),
    Cause(errno.EIO, "Input/output error", "the disk reported an I/O error",
          "check the disk or the network mount, then rerun"),
)
"""The storage faults recognised, each with its fix."""
FOLDER_WIDE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
"""Faults that hit every later write to the same folder, not one file: a sweep stops scheduling on them."""


def cause_of(exc: BaseException) -> Cause | None:
    """The storage cause of an OSError (by errno) or of a DuckDB error (by its text), else None."""
    code = getattr(exc, "errno", None)
    for cause in CAUSES:
        if code == cause.errno or cause.text.lower() in str(exc).lower():
            return cause
    return None


def _file_in(exc: BaseException) -> str | None:
    name = getattr(exc, "filename", None)
    if name:
        return str(name)
    found = re.search(r'"(/[^"]+)"', str(exc))
    return found.group(1) if found else None


def storage_error(exc: BaseException, path: Path | str, doing: str) -> StoreError | None:
    """`exc` as a one-line StoreError ('cannot <doing> <file>: <what>; <fix>'), or None when it is not a
    storage fault. `path` names the file when the error itself does not."""
    cause = cause_of(exc)
    if cause is None:
        return None
    return StoreError(f"cannot {doing} {_file_in(exc) or path}: {cause.what} ({cause.text}); {cause.fix}")


_PYTHON_INTERRUPT = re.compile(r"\b(KeyboardInterrupt|Terminated|IngestInterrupted)\b")
"""The Python interrupts a signal handler raises, as DuckDB quotes them when one lands inside a Python callback it runs
(reading a registered Arrow table: "reading the schema of the object registered as … failed: Terminated: ")."""


def is_interrupt(exc: BaseException) -> bool:
    """A DuckDB query stopped by a signal: DuckDB turns SIGINT (or a Python handler's exception) into an
    InterruptException or RuntimeError('Query interrupted'), and a handler's exception raised inside a Python
    callback it runs into an error that quotes it (then it is no fault of the shard being read)."""
    text, kind = str(exc), type(exc)
    if kind.__name__ == "InterruptException" or (isinstance(exc, RuntimeError) and "interrupted" in text.lower()):
        return True
    return "duckdb" in kind.__module__ and _PYTHON_INTERRUPT.search(text) is not None


# --- who holds the store's lock -----------------------------------------------------------------
@dataclass(frozen=True)
class LockHolder:
    kind: str
    """"reader" (a read-only connection: the dashboard, a query) or "writer" (a sweep or ingest)."""
    pid: int | None
    program: str

    def describe(self) -> str:
        who = f"PID {self.pid}" if self.pid else "another process"
        return f"{who}, {self.program}" if self.program else who


ENTRY_POINTS = ("ssmscope", "ssmscope.runs.cli.main", "ssmscope.runs.cli")
"""How an `ssmscope` command line starts: the console script (the first), or `python -m` one of these."""
SUBCOMMANDS = {"app": "the dashboard (ssmscope app)", "ingest": "ssmscope ingest", "sweep": "ssmscope sweep",
               "param": "ssmscope param fit"}
"""The subcommand word of an `ssmscope` command line → how to name the process (others: `ssmscope <word>`)."""
PROGRAMS = (("streamlit", "the dashboard (ssmscope app)"), ("duckdb", "a DuckDB session"))
"""Words of any other process's command line → how to name it (first match wins)."""


def program_name(argv: list[str]) -> str:
    """How to name a process by its arguments: an `ssmscope` command by its subcommand — the first word after
    the entry point that is not an option, so `ssmscope sweep --ingest-every 8` is a sweep, not an ingest —
    else by PROGRAMS, else by its executable's name."""
    for i, arg in enumerate(argv):
        script = i <= 1 and Path(arg).name == ENTRY_POINTS[0]  # `ssmscope ...` or `python /venv/bin/ssmscope ...`
        if script or (i >= 1 and argv[i - 1] == "-m" and arg in ENTRY_POINTS):
            sub = next((a for a in argv[i + 1:] if not a.startswith("-")), None)
            return SUBCOMMANDS.get(sub, f"ssmscope {sub}") if sub else "ssmscope"
    words = " ".join(argv)
    for word, name in PROGRAMS:
        if word in words:
            return name
    return Path(argv[0]).name if argv else ""


def _program(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return program_name([a.decode(errors="replace") for a in raw.split(b"\0") if a])


def lock_holder(db_path: Path, message: str = "") -> LockHolder:
    """Who holds the DuckDB file's lock: asked of the kernel (F_GETLK), else read from DuckDB's message."""
    kind, pid = None, None
    try:
        fd = os.open(db_path, os.O_RDONLY)
        try:  # struct flock: l_type, l_whence, l_start, l_len, l_pid
            probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            l_type, _, _, _, l_pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, probe))
        finally:
            os.close(fd)
        if l_type != fcntl.F_UNLCK:
            kind, pid = ("reader" if l_type == fcntl.F_RDLCK else "writer"), (l_pid or None)
    except (OSError, struct.error):
        pass
    if kind is None:
        kind = "reader" if "read-only mode" in message else "writer"
        found = re.search(r"PID (\d+)", message)
        pid = int(found.group(1)) if found else None
    return LockHolder(kind, pid, _program(pid) if pid else "")


def lock_error(db_path: Path, exc: BaseException, waited_s: float = 0.0) -> StoreLocked:
    """A lock conflict as a one-line StoreLocked naming the holder and the fix."""
    holder = lock_holder(db_path, str(exc))
    waited = f" (waited {waited_s:.0f} s)" if waited_s >= 1 else ""
    if holder.kind == "reader":
        message = (f"the store {db_path} is open for reading by {holder.describe()}{waited}; it cannot be written "
                   "while a reader has it open: close that reader or try again in a moment")
    else:
        message = (f"the store {db_path} is being written by another process ({holder.describe()}){waited}; "
                   "try again when it finishes")
    return StoreLocked(message, holder)


def is_lock_conflict(exc: BaseException) -> bool:
    return "could not set lock" in str(exc).lower() or "conflicting lock" in str(exc).lower()
