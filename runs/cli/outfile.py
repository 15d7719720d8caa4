"""`--out FILE` of every command (slopes, transfer, param fit): checked before any work, written in one line.

A folder that does not exist, a folder given as the file, or a place this user cannot write is a user
mistake known before the store is read or a run trains, so it is refused then (one line, exit 2);
a fault during the write itself (a full disk) is one line too, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssmscope.ssm.errors import ConfigError


def check_out(out: Path | str | None, option: str = "--out") -> None:
    """Raise a one-line ConfigError unless `out` (None: stdout) can be written: its folder exists and this user
    may write there, and it is not itself a folder."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{option} {out} is a folder; give the name of a file inside it")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"{option} {out}: {folder} {what}; create the folder (mkdir -p) or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        target = out if out.exists() and not os.access(out, os.W_OK) else folder
        raise ConfigError(f"{option} {out}: this user cannot write {target} (read-only or no permission); "
                          "write elsewhere")


@contextmanager
def writing(out: Path | str, option: str = "--out") -> Iterator[None]:
    """Any OSError while writing `out` inside the block becomes one line naming the file and the cause."""
    from ssmscope.runs.store.errors import storage_error

    try:
        yield
    except OSError as exc:
        mapped = storage_error(exc, out, "write")
        raise ConfigError(str(mapped) if mapped is not None
                          else f"{option} {out}: cannot write it ({exc.strerror or exc})") from None
