"""The `ssmscope` command line: thin commands that validate, call one library function, report.

One module per command group (param, sweep, ingest, slopes, transfer, dashboard); each exposes
`register(app)`. They import only runs.cli.console from this package, never this module, so the
CLI has no import circle. User mistakes (ConfigError) end as one line on stderr and exit code 2,
never a traceback. Heavy imports stay inside commands so that `--help` is fast.
"""

from __future__ import annotations

import sys

import typer

from ssmscope.runs.cli import dashboard, ingest, param, slopes, sweep, transfer
from ssmscope.runs.cli.console import err_console

app = typer.Typer(
    name="ssmscope",
    help="Signal-propagation diagnostics for width scaling of selective SSMs (Mamba / S6).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command_group in (param, sweep, ingest, slopes, transfer, dashboard):
    command_group.register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
