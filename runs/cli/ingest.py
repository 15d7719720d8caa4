"""`ssmscope ingest`: load run shards written elsewhere into the store (idempotent)."""

from __future__ import annotations

from typing import Annotated

import typer

from ssmscope.runs.cli.console import DB_HELP, console, db_path, fail


def register(app: typer.Typer) -> None:
    """Add the `ingest` command to the ssmscope app."""
    app.command()(ingest)


def ingest(
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    shards: Annotated[str | None, typer.Option(help="shard directory (default: <db dir>/shards)")] = None,
) -> None:
    """Load run shards into the store (idempotent: already loaded shards are skipped)."""
    from pathlib import Path

    from ssmscope.runs.store.db import StoreError, counts
    from ssmscope.runs.store.db import ingest as do_ingest

    path = db_path(db)
    try:
        rep = do_ingest(path, Path(shards) if shards else None)
        n = counts(path)
    except StoreError as exc:
        fail(str(exc))
    console.print(f"ingested {rep.loaded} new, {rep.replaced} replaced, {rep.skipped} unchanged → {path}: "
                  f"{n['runs']} runs, {n['probes']} probe rows, {n['losses']} loss rows")
