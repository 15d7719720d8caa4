"""`ssmscope param show`: lint a parameterization — every parameter's role, shape, init, lr, multiplier."""

from __future__ import annotations

from typing import Annotated

import typer

from ssmscope.runs.cli.bounds import check_options
from ssmscope.runs.cli.console import console, err_console, fail
from ssmscope.runs.cli.param_diff import register_diff
from ssmscope.runs.cli.param_fit import param_fit
from ssmscope.ssm.config import Discretization, Optimizer, Readout  # light: enums, no torch


def register(app: typer.Typer) -> None:
    """Add the `param` command group to the ssmscope app."""
    param_app = typer.Typer(help="Inspect parameterizations.", no_args_is_help=True)
    param_app.command("show")(param_show)
    param_app.command("fit")(param_fit)
    register_diff(param_app)
    app.add_typer(param_app, name="param")


def param_show(
    preset: Annotated[str, typer.Argument(help="Built-in preset (sp, mup, mup-ssm) or a .toml file")],
    d_model: Annotated[int, typer.Option(help="d_model; N_u = expand · d_model")] = 256,
    d_state: Annotated[int, typer.Option(help="N_x, the state size")] = 16,
    expand: Annotated[int, typer.Option(help="N_u / d_model")] = 2,
    n_layers: Annotated[int, typer.Option(help="number of Mamba blocks")] = 3,
    vocab_size: Annotated[int, typer.Option(help="vocabulary size")] = 256,
    discretization: Annotated[Discretization, typer.Option(help="the discretisation")] = Discretization.ZOH,
    optimizer: Annotated[Optimizer, typer.Option(help="the optimizer (its family sets the lr exponents)")] = (
        Optimizer.ADAM),
    lr: Annotated[float, typer.Option(help="base learning rate (at the base width)")] = 1e-3,
    base: Annotated[str | None, typer.Option(
        help="init base (mamba, hf, ssmscope-v0 or a .toml file); default: the preset's own")] = None,
    readout: Annotated[Readout, typer.Option(help="the readout: as the base ties it, tied to the embedding, "
                                                  "untied, or untied and zero-initialised")] = Readout.BASE,
    all_layers: Annotated[bool, typer.Option(help="one row per layer instead of per position")] = False,
    headdim: Annotated[int, typer.Option(help="Mamba-2 presets: channels per head (nheads = N_u / headdim)")] = 16,
) -> None:
    """Print every parameter's role, shape, init distribution and std, learning rate and multiplier (and, when
    the preset sets them, the constant multiplier and weight decay on/off). A Mamba-2 preset is shown on a
    Mamba-2 model (SSD: its discretisation is Euler whatever --discretization says)."""
    from ssmscope.runs.cli.param_table import plan_table
    from ssmscope.ssm import ConfigError, plan
    from ssmscope.ssm.presets import load_preset, readout_tied, readout_zero, with_base

    try:
        check_options({"--d-model": d_model, "--d-state": d_state, "--expand": expand, "--n-layers": n_layers,
                       "--vocab-size": vocab_size, "--lr": lr, "--headdim": headdim})
        p = with_base(load_preset(preset), base)
        cfg, model = _model(p.family, d_model=d_model, d_state=d_state, expand=expand, n_layers=n_layers,
                            vocab_size=vocab_size, discretization=discretization, readout=readout, headdim=headdim)
        rows = plan(model, cfg, p, optimizer, lr)
    except ConfigError as exc:
        fail(str(exc))
    b = p.init_base
    shape = f"R={cfg.rank}" if hasattr(cfg, "rank") else f"{cfg.nheads} heads of {cfg.headdim}"
    title = (f"{p.name} on base {b.name} — N_u={cfg.d_inner}, N_x={cfg.d_state}, d_model={cfg.d_model}, "
             f"{shape}, {cfg.n_layers} layers, {cfg.discretization}, {optimizer}, base lr {lr:g} "
             f"(base width N_u0={p.base_n_u}, N_x0={p.base_n_x}; readout "
             f"{'tied to the embedding' if readout_tied(cfg, p) else 'untied'}"
             f"{', zero-initialised' if readout_zero(cfg, p) and not readout_tied(cfg, p) else ''})")
    console.print(plan_table(rows, title, collapse_layers=not all_layers))
    uncovered = [r.name for r in rows if r.role is None]
    if uncovered:
        err_console.print(f"[bold yellow]warning:[/bold yellow] no rule covers {len(uncovered)} "
                          f"parameter(s): {', '.join(uncovered)}")
        raise typer.Exit(1)
    tied = sum(r.tied_to is not None for r in rows)
    console.print(f"all {len(rows)} parameters covered by preset {p.name!r} ({p.source}) on base "
                  f"{b.name!r} ({b.source})" + (f"; {tied} tied (one tensor, two uses)" if tied else ""))


def _model(family: str, *, d_model: int, d_state: int, expand: int, n_layers: int, vocab_size: int,
           discretization: Discretization, readout: Readout, headdim: int) -> tuple[object, object]:
    """(config, model on the meta device) of the preset's family: MambaLM for `mamba`, Mamba2LM for `mamba2`."""
    from ssmscope.ssm import MambaConfig, MambaLM
    from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM

    if family == "mamba2":
        cfg = Mamba2Config(d_model=d_model, d_state=d_state, expand=expand, n_layers=n_layers, vocab_size=vocab_size,
                           headdim=headdim, tie_readout=readout.tie, zero_readout=readout.zero)
        build = Mamba2LM
    else:
        cfg = MambaConfig(d_model=d_model, d_state=d_state, expand=expand, n_layers=n_layers, vocab_size=vocab_size,
                          discretization=discretization, tie_readout=readout.tie, zero_readout=readout.zero)
        build = MambaLM
    with _meta_device():
        return cfg, build(cfg)


class _meta_device:
    """Build models on the meta device: `param show` needs shapes, not memory."""

    def __enter__(self):
        import torch

        self._ctx = torch.device("meta")
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
