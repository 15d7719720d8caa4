"""`ssmscope slopes`: width-scaling exponents from the store, as the paper's table or every fit.

    ssmscope slopes                                               # the paper's table, last step (a table on a TTY)
    ssmscope slopes --format md                                   # Markdown (the default when piped)
    ssmscope slopes --where preset=mup-ssm --table full --format csv --out slopes.csv
    ssmscope slopes --width 2d --convention l2 --out table.tex    # the format follows the suffix

runs/cli/main.py calls `register(app)`. Options are checked before the store is opened; user errors
(a bad option, a bad --where, an empty selection, a missing store) end as one line and exit code 2.
The --where language is runs.analysis.selection. `--format table` is drawn by runs.cli.table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ssmscope.runs.analysis.selection import (
    STEP_HELP,
    Filter,
    filter_expr,
    parse_filters,
    parse_step,
    pushdown_filters,
)
from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.runs.analysis.vocabulary import Design, LayerAgg, TableKind  # light: enums only
from ssmscope.runs.cli.bounds import check_memory, check_options
from ssmscope.runs.cli.console import DB_HELP, WHERE_HELP, console, err_console, fail
from ssmscope.runs.cli.outfile import check_out, writing

if TYPE_CHECKING:  # polars and the analysis load inside the command: `ssmscope --help` stays fast
    import polars as pl

    from ssmscope.runs.analysis.export import Format

TABLE = "table"
"""The terminal format (rich): not one of runs.analysis.export's file formats."""
SUFFIX_FORMATS = {".csv": "csv", ".md": "md", ".tex": "latex", ".parquet": "parquet", ".json": "json", ".txt": TABLE}
"""--out FILE without --format: the format its suffix names."""


# --- loading -------------------------------------------------------------------------------------
def load_frame(db: Path | None, filters: list[Filter]) -> pl.DataFrame:
    """The probe frame of the selection: the store's load_probe_frame, then every filter in polars."""
    from ssmscope.runs.store import db as store
    from ssmscope.runs.store.schema import FILTER_COLUMNS

    path = Path(db) if db is not None else store.default_db_path()
    frame = store.load_probe_frame(path, pushdown_filters(filters, FILTER_COLUMNS) or None)
    return frame.filter(filter_expr(filters)) if filters else frame


# --- the command ---------------------------------------------------------------------------------
CONVENTION_HELP = "norm convention: rms, l2, token_l2 or channel_l2"
WIDTH_HELP = "joint (N_u = N_x), n_u (N_x fixed), n_x (N_u fixed) or 2d (s_u and s_x)"
TABLE_HELP = ("paper (‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖ per preset), full (every cell), groups (each parameter group's "
              "contribution to ‖Δx‖, ‖Δy‖, ‖Δ(C·x)‖; needs a sweep with group_probes = true) or slices (Mamba-2: "
              "each in_proj row block's output z, x, B, C, dt and its change)")
FIT_HELP = ("all (one power law over every width), top-octaves (the widths within 2 octaves of the largest; "
            "verdicts judged there) or running (local slopes: pairs, 3-width windows, top octaves)")
LAYERS_HELP = "each (a fit per layer) or mean (over layers); default: mean for paper, each for full"
FORMAT_HELP = ("table (coloured, for a terminal), md, csv, latex, parquet or json; default: table on a terminal, "
               "else md, or what the suffix of --out names (.csv .md .tex .parquet .json .txt)")


def register(app: typer.Typer) -> None:
    """Add the `slopes` command to the ssmscope app."""

    @app.command("slopes")
    def slopes(
        fmt: Annotated[str | None, typer.Option("--format", help=FORMAT_HELP)] = None,
        db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
        where: Annotated[list[str] | None, typer.Option(help=WHERE_HELP)] = None,
        step: Annotated[str, typer.Option(help=STEP_HELP)] = "last",
        convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "rms",
        width: Annotated[Design, typer.Option(help=WIDTH_HELP)] = Design.JOINT,
        table: Annotated[TableKind, typer.Option(help=TABLE_HELP)] = TableKind.PAPER,
        layers: Annotated[LayerAgg | None, typer.Option(help=LAYERS_HELP)] = None,
        out: Annotated[Path | None, typer.Option(help="output file (required for parquet)")] = None,
        n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the seeds (0: no CI)")] = DEFAULT_N_BOOT,
        seed: Annotated[int, typer.Option(help="seed of the bootstrap draws")] = 0,
        include_failed: Annotated[bool, typer.Option(help="fit diverged and failed runs too")] = False,
        fit: Annotated[str, typer.Option(help=FIT_HELP)] = "all",
    ) -> None:
        """Fit width-scaling exponents (log-log, seed-bootstrap CIs) beside the predicted ones."""
        from ssmscope.ssm.errors import ConfigError

        try:
            out_format, options = _options(fmt, out, step, convention, width, table, layers, n_boot, seed,
                                           include_failed)
            options["fit"] = _fit_option(fit, options["design"])
            filters = parse_filters(where or [])
            frame = load_frame(Path(db) if db else None, filters)
            if frame.is_empty():
                selection = f" ({'; '.join(where)})" if where else ""
                raise ConfigError(f"no probe rows match the selection{selection}")
            _check_bootstrap_memory(frame, n_boot)
            result, raw, caption = _compute(frame, table, out_format, options)
            if result.is_empty():
                raise ConfigError(_nothing_to_fit(frame, table, options["design"]))
            with writing(out or "stdout"):
                if out_format == TABLE:
                    _write_table(result, table, caption, out)
                else:
                    _write(result, out_format, out, caption, raw)
        except ConfigError as exc:
            fail(str(exc))


def output_format(fmt: str | None, out: Path | None, tty: bool | None = None) -> Format | str:
    """The format to write: --format when given; else the suffix of --out; else table on a TTY, md otherwise."""
    from ssmscope.runs.analysis.export import Format, parse_format
    from ssmscope.ssm.errors import ConfigError

    if fmt is None and out is not None:
        fmt = SUFFIX_FORMATS.get(Path(out).suffix.lower())
        if fmt is None:
            raise ConfigError(f"--out {out}: cannot tell the format from its suffix; give --format "
                              f"(suffixes: {', '.join(SUFFIX_FORMATS)})")
    if fmt is None:
        fmt = TABLE if (sys.stdout.isatty() if tty is None else tty) else Format.MD.value
    if fmt == TABLE:
        return TABLE
    try:
        return parse_format(fmt)
    except ConfigError:
        raise ConfigError(f"--format={fmt!r}; allowed: {TABLE}, {', '.join(f.value for f in Format)}") from None


def _options(fmt: str | None, out: Path | None, step: str, convention: str, width: str, table: str,
             layers: str | None, n_boot: int, seed: int, include_failed: bool) -> tuple[Format | str, dict]:
    """Check every option before the store is opened: the output format and the fit options."""
    from ssmscope.runs.analysis.export import BINARY_FORMATS
    from ssmscope.runs.analysis.norms import parse_convention
    from ssmscope.runs.analysis.slopes import LayerAgg
    from ssmscope.ssm.errors import ConfigError

    out_format = output_format(fmt, out)
    if out_format in BINARY_FORMATS and out is None:
        raise ConfigError(f"--format {out_format.value} writes a binary file: give --out FILE")
    check_options({"--n-boot": n_boot, "--seed": seed})
    check_out(out)
    layers = layers or (LayerAgg.MEAN if table == TableKind.PAPER else LayerAgg.EACH)
    options = dict(convention=parse_convention(convention), design=width, layers=layers, step=parse_step(step),
                   n_boot=n_boot, rng_seed=seed, include_failed=include_failed)
    return out_format, options


def _check_bootstrap_memory(frame: pl.DataFrame, n_boot: int) -> None:
    """The seed bootstrap's arrays grow with n_boot × seeds per cell: refuse before fitting when they cannot
    fit this machine (the largest cell has at most as many seeds as the selection)."""
    from ssmscope.runs.analysis.slopes.bootstrap import bootstrap_bytes

    if n_boot > 0:
        seeds = frame["seed"].n_unique()
        check_memory(f"--n-boot {n_boot} over {seeds} seeds", bootstrap_bytes(n_boot, seeds),
                     "lower --n-boot (the default is 1000)")


def _fit_option(fit: str, design: str) -> str:
    """--fit checked against the design: windows run along one width axis."""
    from ssmscope.runs.analysis.slope_tables import parse_fit
    from ssmscope.ssm.errors import ConfigError

    value = parse_fit(fit).value
    if value != "all" and design == "2d":
        raise ConfigError(f"--fit {value} runs along one width axis; use --width joint, n_u or n_x (got 2d)")
    return value


def _nothing_to_fit(frame: pl.DataFrame, table: str, design: str) -> str:
    """Why a selection with rows gave no fit, as a hint."""
    from ssmscope.runs.analysis.slopes.fit import on_axis

    if design == "joint" and frame.filter(on_axis(design)).is_empty():
        return "nothing to fit: no runs with N_u = N_x for --width joint; use --width 2d, n_u or n_x"
    if table == TableKind.PAPER:
        return "nothing to fit: the paper table needs rows of site x/y, quantity value/delta_init, group ''"
    if table == TableKind.GROUPS:
        from ssmscope.runs.analysis.groups import NO_GROUP_PROBES

        return NO_GROUP_PROBES
    if table == TableKind.SLICES:
        from ssmscope.runs.analysis.slope_tables import NO_SLICES

        return NO_SLICES
    return "nothing to fit in the selection"


def _compute(frame: pl.DataFrame, table: str, out_format: Format | str,
             options: dict) -> tuple[pl.DataFrame, list[str], str]:
    """The frame to export (the fitted rows for the terminal table), the columns that hold markup already,
    and a caption that names presets that are one parameterization for this selection."""
    from ssmscope.runs.analysis import export
    from ssmscope.runs.analysis.slope_tables import slope_table

    notes = export.coincidence_notes(frame, options["design"])
    slopes = slope_table(frame, table=table, **options)
    if table != TableKind.PAPER or options["fit"] == "running":  # running: one row per window, not a paper cell
        if out_format == TABLE:
            return slopes, [], export.slope_caption(slopes, notes)
        return export.full_output(slopes, out_format, notes)
    if out_format == TABLE:
        return slopes, [], export.compact_caption(slopes, notes)
    return export.paper_output(slopes, out_format, notes)


def _write(result: pl.DataFrame, out_format: Format, out: Path | None, caption: str, raw: list[str]) -> None:
    """Print the export, or write it to `out` and say so on stderr."""
    from ssmscope.runs.analysis.export import export

    text = export(result, out_format, out, caption=caption, raw_columns=raw)
    if text is not None:
        typer.echo(text, nl=False)
    else:
        err_console.print(f"wrote {result.height} rows to {out}", highlight=False)


def _write_table(result: pl.DataFrame, table: str, caption: str, out: Path | None) -> None:
    """The terminal table on stdout (colours on a terminal), or as plain text in `out`."""
    from ssmscope.runs.cli.table import full_rich_table, paper_rich_table, print_table, render

    rich_table = paper_rich_table(result) if table == TableKind.PAPER else full_rich_table(result)
    if out is None:
        print_table(console, rich_table, caption)
        return
    Path(out).write_text(render(rich_table, caption, colour=False), encoding="utf-8")
    err_console.print(f"wrote the table to {out}", highlight=False)
