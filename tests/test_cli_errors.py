"""What the command line itself gets wrong is one line too: unknown commands and options, values that are not
numbers or not one of an option's choices (parsed as enums at the edge), and — a bug, not a user mistake — an
unexpected exception ("internal error", exit 1; SSMSCOPE_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssmscope.runs.cli import param as param_module
from ssmscope.runs.cli.main import DEBUG_ENV, app

CLI = [str(Path(sys.executable).with_name("ssmscope"))]


@pytest.mark.parametrize(("args", "line"), [
    (["param", "show", "sp", "--optimizer", "bogus"],
     "error: Invalid value for '--optimizer': Value error, 'bogus' is not one of 'sgd', 'adam', 'adamw'. "
     "(see `ssmscope param show --help`)"),
    (["param", "show", "sp", "--discretization", "rk4"],
     "error: Invalid value for '--discretization': Value error, 'rk4' is not one of 'zoh', 'euler'. "
     "(see `ssmscope param show --help`)"),
    (["sweep", "smoke", "--executor", "k8s"],
     "error: Invalid value for '--executor': Value error, 'k8s' is not one of 'local', 'ray', 'slurm'. "
     "(see `ssmscope sweep --help`)"),
    (["sweep", "smoke", "--cluster", "aws", "--executor", "slurm"],
     "error: Invalid value for '--cluster': Value error, 'aws' is not one of 'slurm', 'local'. "
     "(see `ssmscope sweep --help`)"),
    (["sweep", "smoke", "--address", "auto"], "error: --address applies to --executor ray (got --executor local)"),
    (["sweep", "smoke", "--workers", "2", "--executor", "slurm"],
     "error: --workers applies to --executor local (got --executor slurm)"),
    (["sweep", "smoke", "--time-min", "5"], "error: --time-min applies to --executor slurm (got --executor local)"),
    (["ingest", "--wait", "soon"], "error: Invalid value for '--wait': Input should be a valid number, unable to "
                                   "parse string as a number (see `ssmscope ingest --help`)"),
    (["slopes", "--table", "half"], "error: Invalid value for '--table': Value error, 'half' is not one of 'paper', "
                                    "'full', 'groups', 'slices'. (see `ssmscope slopes --help`)"),
    (["nosuch"], "error: No such command 'nosuch'. (see `ssmscope --help`)"),
])
def test_command_line_mistakes_are_one_line_with_exit_2(args, line):
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == line and done.stdout == ""


def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(param_module, "check_options", broken)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    result = CliRunner().invoke(app, ["param", "show", "sp"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == ("error: internal error: RuntimeError: something nobody foresaw (a bug: please "
                                     "report it with the command; SSMSCOPE_DEBUG=1 shows the traceback)")
    monkeypatch.setenv(DEBUG_ENV, "1")
    result = CliRunner().invoke(app, ["param", "show", "sp"])
    assert isinstance(result.exception, RuntimeError)  # raised, with its traceback, for the developer
