"""`ssmscope report`: the paper's message and how to reproduce it, as one self-contained HTML file (and a PDF).

    ssmscope report                                   # every sweep of the store → ./report.html
    ssmscope report --sweep paper-figure --sweep hp-transfer --out results/report.html --pdf
    ssmscope report --where "preset in (sp, mup-ssm)" --convention l2

runs/cli/main.py calls `register(app)`. The report needs the dashboard's figure, and nothing under runs/
imports app/ (docs/architecture.md), so — as `ssmscope app` runs the dashboard — this command checks its
options and the store here, then runs the builder, `python -m ssmscope.app.report` (app/report.py), in a child
process and passes its progress lines through. Every user mistake is one line and exit code 2, found before
the child starts: no store, an empty store, an unknown sweep, a bad --where, an --out that cannot be written.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.runs.cli.bounds import check_options
from ssmscope.runs.cli.console import DB_HELP, WHERE_HELP, err_console, error_line, fail
from ssmscope.runs.cli.outfile import check_out

BUILDER = "ssmscope.app.report"
"""The module the child process runs (python -m)."""
HTML_SUFFIXES = (".html", ".htm")


def builder_command(db: Path, out: Path, sweeps: list[str], where: list[str], convention: str, n_boot: int,
                    pdf: bool, shown: str) -> list[str]:
    """The child's command line."""
    cmd = [sys.executable, "-m", BUILDER, "--db", str(db), "--out", str(out), "--convention", convention,
           "--n-boot", str(n_boot), "--command", shown]
    for s in sweeps:
        cmd += ["--sweep", s]
    for w in where:
        cmd += ["--where", w]
    return [*cmd, "--pdf"] if pdf else cmd


def check_selection(db: Path, sweeps: list[str], where: list[str]) -> int:
    """Raise a one-line ConfigError unless the store holds runs for the selection; the number of runs."""
    import polars as pl

    from ssmscope.runs.analysis.selection import filter_expr, parse_filters, pushdown_filters
    from ssmscope.runs.store import db as store
    from ssmscope.runs.store.schema import FILTER_COLUMNS
    from ssmscope.ssm.errors import ConfigError

    filters = parse_filters(where)
    if not db.exists():
        raise ConfigError(f"no store at {db}; run a sweep first, e.g. `ssmscope sweep smoke --db {db}`")
    runs = store.load_runs(db)
    if runs.is_empty():
        raise ConfigError(f"the store {db} holds no runs; run a sweep first, e.g. `ssmscope sweep smoke --db {db}`")
    have = sorted(runs["spec"].unique().to_list())
    unknown = [s for s in sweeps if s not in have]
    if unknown:
        raise ConfigError(f"--sweep {unknown[0]}: no such sweep in {db}; it holds {', '.join(have)}")
    if sweeps:
        runs = runs.filter(pl.col("spec").is_in(sweeps))
    run_filters = [f for f in filters if f.column in runs.columns]
    if run_filters:
        pushdown_filters(filters, FILTER_COLUMNS)  # the same check the builder's read makes
        runs = runs.filter(filter_expr(run_filters))
    if runs.is_empty():
        raise ConfigError(f"no runs match the selection ({'; '.join(where)})")
    return runs.height


def register(app: typer.Typer) -> None:
    """Add the `report` command to the ssmscope app."""

    @app.command("report")
    def report(
        db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
        sweep: Annotated[list[str] | None, typer.Option(help="a sweep (spec) to report, repeatable; default: "
                                                             "every sweep of the store")] = None,
        where: Annotated[list[str] | None, typer.Option(help=WHERE_HELP)] = None,
        out: Annotated[Path, typer.Option(help="the HTML file to write (the PDF goes beside it)")] = Path(
            "report.html"),
        pdf: Annotated[bool, typer.Option(help="also print a PDF next to the HTML when a Chromium exists")] = False,
        convention: Annotated[str, typer.Option(help="norm convention: rms, l2, token_l2 or channel_l2")] = "rms",
        n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the seeds (0: no CI)")] = DEFAULT_N_BOOT,
    ) -> None:
        """One self-contained HTML report (figure, slope tables, LR transfer, provenance, commands); --pdf too."""
        from ssmscope.runs.analysis.norms import parse_convention
        from ssmscope.runs.cli.console import db_path
        from ssmscope.runs.store.errors import StoreError
        from ssmscope.ssm.errors import ConfigError

        path = db_path(db)
        sweeps, clauses = list(sweep or []), list(where or [])
        try:
            convention = str(parse_convention(convention).value)
            check_options({"--n-boot": n_boot})
            if out.suffix.lower() not in HTML_SUFFIXES:
                raise ConfigError(f"--out {out}: the report is an HTML file; give a name ending in .html")
            check_out(out)
            n_runs = check_selection(path, sweeps, clauses)
        except (ConfigError, StoreError) as exc:
            fail(str(exc))
        shown = shlex.join(["ssmscope", "report", *sys.argv[2:]]) if sys.argv[1:2] == ["report"] else \
            f"ssmscope report --db {shlex.quote(str(path))}"
        err_console.print(f"report: {n_runs} runs of {path}", highlight=False)
        code = _run_child(builder_command(path, out, sweeps, clauses, convention, n_boot, pdf, shown))
        if code != 0:
            raise typer.Exit(code)
        err_console.print(f"report: open {out.resolve()} in a browser (it works offline)", highlight=False)


def _run_child(cmd: list[str]) -> int:
    """Run the builder, passing its progress (and its one-line errors) through as they come; its exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        for line in proc.stderr:
            line = line.rstrip("\n")
            if line.startswith("error: "):
                error_line(line.removeprefix("error: "))
            elif line.strip():
                err_console.print(line, highlight=False, markup=False, soft_wrap=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
