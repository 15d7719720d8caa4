"""`ssmscope transfer`: the optimal learning rate per width and its drift, from an LR-grid sweep.

    ssmscope sweep hp-transfer && ssmscope transfer --format md
    ssmscope transfer --where discretization=zoh --table optima --format csv --out optima.csv
    ssmscope transfer --table eta            # η* per width, one column per parameterization (Megatron's table)

runs/cli/main.py calls `register(app)`. The analysis is runs.analysis.transfer (pure polars/numpy); this
module loads the loss frame, applies --where (the same syntax as `ssmscope slopes`) and exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.runs.analysis.vocabulary import TransferTable  # light: enums only
from ssmscope.runs.cli.bounds import check_option
from ssmscope.runs.cli.console import DB_HELP, console, err_console, fail
from ssmscope.runs.cli.outfile import check_out, writing

WHERE_HELP = "filter on run keys, repeatable: key=value, key=v1,v2, key!=v, n_u>=64 (as in `ssmscope slopes`)"


def transfer_tables(db: Path | None, where: list[str], use: str, n_boot: int):
    """(drift frame, optima frame) for the selection; a ConfigError when it holds no LR grid."""
    import polars as pl

    from ssmscope.runs.analysis.selection import filter_expr, parse_filters, pushdown_filters
    from ssmscope.runs.analysis.transfer import drift, final_losses, group_keys, optima
    from ssmscope.runs.store import db as store
    from ssmscope.runs.store.schema import FILTER_COLUMNS
    from ssmscope.ssm.errors import ConfigError

    filters = parse_filters(where)
    path = Path(db) if db is not None else store.default_db_path()
    losses = store.load_losses(path, pushdown_filters(filters, FILTER_COLUMNS) or None)
    losses = losses.filter(filter_expr([f for f in filters if f.column in losses.columns])) if filters else losses
    if losses.is_empty():
        raise ConfigError(f"no runs in {path} match the selection; run `ssmscope sweep hp-transfer --db {path}`")
    final = final_losses(losses, use=use)
    if final.is_empty():
        raise ConfigError(f"the selected runs logged no {use}; hp-transfer specs set eval_every "
                          "(or use --use train_loss)")
    per_grid = final.group_by(*group_keys(final), "n_u", "n_x").agg(pl.col("lr").n_unique())
    if per_grid["lr"].max() < 3:
        raise ConfigError("the selection has fewer than 3 learning rates per width: run an LR grid, "
                          f"e.g. `ssmscope sweep hp-transfer --db {path}`")
    opt = optima(final, n_boot=n_boot)
    return drift(opt, final, n_boot=n_boot), opt


def register(app: typer.Typer) -> None:
    """Add the `transfer` command to the ssmscope app."""

    @app.command()
    def transfer(
        fmt: Annotated[str, typer.Option("--format", help="md, csv, latex, json or parquet")] = "md",
        out: Annotated[Path | None, typer.Option(help="write to this file instead of stdout")] = None,
        db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
        where: Annotated[list[str] | None, typer.Option(help=WHERE_HELP)] = None,
        table: Annotated[TransferTable, typer.Option(
            help="drift (per parameterization: drift of η* and the loss-at-optimum slope, with CIs), optima (one "
                 "row per width: η*, the loss at it and its seed spread) or eta (η* per width, one column per "
                 "parameterization)")] = TransferTable.DRIFT,
        use: Annotated[str, typer.Option(help="eval_loss (held out) or train_loss")] = "eval_loss",
        n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the seeds")] = DEFAULT_N_BOOT,
    ) -> None:
        """Optimal learning rate per width (parabola in log2 lr) and its drift across widths."""
        from ssmscope.runs.analysis.export import export, parse_format
        from ssmscope.runs.analysis.transfer import eta_table
        from ssmscope.ssm.errors import ConfigError

        try:
            out_format = parse_format(fmt)
            if use not in ("eval_loss", "train_loss"):
                raise ConfigError(f"--use={use!r}; allowed: eval_loss, train_loss")
            # Its bootstrap keeps one float per resample and cell at a time: the range bounds memory and time.
            check_option("--n-boot", n_boot)
            check_out(out)
            drift_frame, optima_frame = transfer_tables(db, where or [], use, n_boot)
            frame = {TransferTable.DRIFT: drift_frame, TransferTable.OPTIMA: optima_frame,
                     TransferTable.ETA: eta_table(optima_frame)}[table]
            caption = ("drift = slope of log2 η* against log2 width over widths with an interior optimum; "
                       f"loss_slope = slope of the {use} at the optimum against log2 width (negative: wider is "
                       "better); 95% seed-bootstrap CIs, none with one seed (the reason says so); η* = vertex of a "
                       f"parabola in log2 lr through the minimum of the seed-mean {use} and its neighbours"
                       + ("; ^ / v: the best grid point was the largest / smallest learning rate"
                          if table == TransferTable.ETA else ""))
            with writing(out or "stdout"):
                text = export(frame, out_format, out, caption=caption)
        except ConfigError as exc:
            fail(str(exc))
        if text is not None:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            err_console.print(f"wrote {out}")
