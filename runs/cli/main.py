"""The `ssmscope` command line: thin commands that validate, call one library function, report.

One module per command group (param, sweep, ingest, slopes, transfer, report, dashboard); each exposes
`register(app)`. They import only runs.cli.console from this package, never this module, so the
CLI has no import circle. User mistakes end as one line on stderr and exit code 2, never a traceback:
a ConfigError inside a command (runs.cli.console.fail), and what the command line itself gets wrong —
an unknown option, a value that is not a number or not one of an option's choices (the choices are
enums, parsed here at the edge) — through OneLineErrors. An unexpected exception is one line too
("internal error", exit 1); SSMSCOPE_DEBUG=1 shows its traceback. Heavy imports stay inside commands
so that `--help` is fast.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer._click import exceptions as click  # typer vendors click: its exceptions are these
from typer.core import TyperGroup
from typer.exceptions import Abort

from ssmscope.runs.cli import dashboard, ingest, param, report, slopes, sweep, transfer
from ssmscope.runs.cli.console import err_console, error_line

DEBUG_ENV = "SSMSCOPE_DEBUG"
"""Set to 1 to see the traceback of an unexpected error instead of its one line."""


class OneLineErrors(TyperGroup):
    """The command group, with command-line mistakes and unexpected errors as one line each (exit 2 / 1)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            error_line(f"{exc.format_message()}{hint}")
            code = exc.exit_code
        except Abort:
            err_console.print("interrupted")
            code = 130
        except click.ClickException as exc:
            error_line(exc.format_message())
            code = exc.exit_code
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            error_line(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                       f"(a bug: please report it with the command; {DEBUG_ENV}=1 shows the traceback)")
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="ssmscope",
    cls=OneLineErrors,
    help="Signal-propagation diagnostics for width scaling of selective SSMs (Mamba / S6).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command_group in (param, sweep, ingest, slopes, transfer, report, dashboard):
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
