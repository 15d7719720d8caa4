"""What every `ssmscope` command shares: the consoles, one-line failures and warnings, the store path option."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

DB_HELP = "DuckDB store (default: $SSMSCOPE_DB or ./ssmscope-data/ssmscope.duckdb)"
WHERE_HELP = ("filter, repeatable: key=value, key=v1,v2, key!=v, n_u>=64, \"preset in (sp, mup)\", "
              "several joined by ' and '; keys: run keys and step, layer, site, quantity, group")


def error_line(message: str) -> None:
    """Print one error line (the message is text: its brackets are not markup)."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print one line for a user error and exit."""
    error_line(message)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print one line about something the command worked around (it goes on)."""
    err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """Print one informational line (never wrapped)."""
    console.print(escape(message), highlight=False, soft_wrap=True)


@contextmanager
def one_line_errors(path: Path | str = "") -> Iterator[None]:
    """User mistakes (ConfigError, StoreError) and storage faults (ENOSPC, EACCES, EROFS, ... as OSError)
    inside the block end the command with one line naming the file and the fix, exit code 2."""
    from ssmscope.runs.store.errors import storage_error
    from ssmscope.ssm.errors import ConfigError

    try:
        yield
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        mapped = storage_error(exc, path, "write")
        if mapped is None:
            raise
        fail(str(mapped))


def status_counts(statuses: Mapping[str, int]) -> str:
    """'3 completed, 0 diverged, 1 failed': a sweep's finished runs by status, every final status named."""
    from ssmscope.runs.store.schema import RunStatus

    return ", ".join(f"{statuses.get(s, 0)} {s}" for s in (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED))


def db_path(db: str | Path | None) -> Path:
    """The store a command works on: --db, else $SSMSCOPE_DB, else the default. A path that exists and is not a
    regular file (a folder, a FIFO, a device) ends the command in one line: opening a FIFO would block forever."""
    from ssmscope.runs.store.connection import check_store_file
    from ssmscope.runs.store.db import default_db_path
    from ssmscope.runs.store.errors import StoreError

    path = Path(db) if db else default_db_path()
    try:
        check_store_file(path)
    except StoreError as exc:
        fail(str(exc))
    return path
