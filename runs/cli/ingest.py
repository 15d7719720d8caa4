"""`ssmscope ingest`: load run shards into the store (idempotent), and clean up after killed writers."""

from __future__ import annotations

from typing import Annotated

import typer

from ssmscope.runs.cli.bounds import check_options
from ssmscope.runs.cli.console import DB_HELP, db_path, fail, note, one_line_errors, warn


def register(app: typer.Typer) -> None:
    """Add the `ingest` command to the ssmscope app."""
    app.command()(ingest)


def ingest(
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    shards: Annotated[str | None, typer.Option(help="shard folder (default: $SSMSCOPE_SHARDS or <db dir>/<db name>"
                                                    ".shards, the store's own)")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for a store another process holds")] = 60.0,
    clean_stale: Annotated[bool, typer.Option("--clean-stale", help="first remove temporaries of writers that died "
                                              "mid-write (older than --older-than, no live writer)")] = False,
    older_than: Annotated[float, typer.Option(help="--clean-stale: minutes since a temporary last changed")] = 60.0,
) -> None:
    """Load run shards into the store (idempotent: already loaded shards are skipped; bad ones are quarantined)."""
    from pathlib import Path

    from ssmscope.runs.store.db import IngestInterrupted, StoreError, counts, shard_dir_for
    from ssmscope.runs.store.db import ingest as do_ingest
    from ssmscope.runs.store.layout import LEGACY_SHARDS
    from ssmscope.runs.store.shard_maintenance import clean_stale as do_clean
    from ssmscope.runs.store.shard_maintenance import stale_temporaries
    from ssmscope.runs.sweeps.signals import stop_signals
    from ssmscope.ssm.errors import ConfigError

    try:
        check_options({"--wait": wait, "--older-than": older_than})
    except ConfigError as exc:
        fail(str(exc))
    path = db_path(db)
    given = Path(shards) if shards else None
    if given is not None and not given.is_dir():
        fail(f"no shard folder {given}; check --shards (or leave it out for the store's own, {shard_dir_for(path)})")
    root = given or shard_dir_for(path)
    if given is None and not path.exists() and not root.is_dir() and not (path.parent / LEGACY_SHARDS).is_dir():
        fail(f"nothing to ingest: the store {path} does not exist and neither does its shard folder {root} "
             "(a sweep makes both); check --db, or give the shards with --shards")
    with stop_signals() as signals:  # SIGTERM stops an ingest as Ctrl-C does: one line, exit 143
        try:
            with one_line_errors(root):
                try:
                    removed = do_clean(root, older_than * 60) if clean_stale else []
                    rep = do_ingest(path, given, wait_s=wait, on_wait=note)
                    n = counts(path, wait_s=wait, on_wait=note)  # a reader may open it meanwhile: wait as asked
                except StoreError:
                    # A signal that lands between two statements of a shard's transaction surfaces as DuckDB's
                    # "transaction is aborted", not as an interrupt: after a stop signal, it is the interrupt.
                    if signals.received is None:
                        raise
                    raise KeyboardInterrupt from None
        except IngestInterrupted as exc:
            fail(exc.describe(), code=signals.exit_code)
        except KeyboardInterrupt:
            fail(f"ingest interrupted; what it loaded into {path} stays: rerun `ssmscope ingest --db {path}` to "
                 "finish", code=signals.exit_code)
    if rep.migration is not None:
        note(rep.migration.describe())
    if clean_stale:
        note(f"removed {len(removed)} stale temporar{'y' if len(removed) == 1 else 'ies'} from {root}")
    note(f"ingested {len(rep.loaded)} new, {len(rep.replaced)} replaced, {rep.skipped} unchanged → {path}: "
         f"{n['runs']} runs, {n['probes']} probe rows, {n['losses']} loss rows")
    if rep.problems():
        warn(rep.problems())
    stale = [] if clean_stale else stale_temporaries(root)
    if stale:
        note(f"{len(stale)} stale temporar{'y' if len(stale) == 1 else 'ies'} of writers that died mid-write in "
             f"{root}: `ssmscope ingest --clean-stale` removes them")
