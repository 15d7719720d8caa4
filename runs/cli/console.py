"""What every `ssmscope` command shares: the consoles, the one-line failure, the store path option."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

DB_HELP = "DuckDB store (default: $SSMSCOPE_DB or ./ssmscope-data/ssmscope.duckdb)"
WHERE_HELP = ("filter, repeatable: key=value, key=v1,v2, key!=v, n_u>=64, \"preset in (sp, mup)\", "
              "several joined by ' and '; keys: run keys and step, layer, site, quantity, group")


def fail(message: str, code: int = 2) -> None:
    """Print one line for a user error and exit."""
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def db_path(db: str | Path | None) -> Path:
    """The store a command works on: --db, else $SSMSCOPE_DB, else the default."""
    from ssmscope.runs.store.db import default_db_path

    return Path(db) if db else default_db_path()
