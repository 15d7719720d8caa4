"""The `ssmscope` command line: thin commands that validate, call one library function, report.

User mistakes (ConfigError) end as one line on stderr and exit code 2, never a traceback.
Heavy imports stay inside commands so that `--help` is fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="ssmscope",
    help="Signal-propagation diagnostics for width scaling of selective SSMs (Mamba / S6).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
param_app = typer.Typer(help="Inspect parameterizations.", no_args_is_help=True)
app.add_typer(param_app, name="param")

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print one line for a user error and exit."""
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@param_app.command("show")
def param_show(
    preset: Annotated[str, typer.Argument(help="Built-in preset (sp, mup, mup-ssm) or a .toml file")],
    d_model: Annotated[int, typer.Option(help="d_model; N_u = expand · d_model")] = 256,
    d_state: Annotated[int, typer.Option(help="N_x, the state size")] = 16,
    expand: Annotated[int, typer.Option(help="N_u / d_model")] = 2,
    n_layers: Annotated[int, typer.Option(help="number of Mamba blocks")] = 3,
    vocab_size: Annotated[int, typer.Option(help="vocabulary size")] = 256,
    discretization: Annotated[str, typer.Option(help="zoh or euler")] = "zoh",
    optimizer: Annotated[str, typer.Option(help="sgd, adam or adamw")] = "adam",
    lr: Annotated[float, typer.Option(help="base learning rate (at the base width)")] = 1e-3,
    all_layers: Annotated[bool, typer.Option(help="one row per layer instead of per position")] = False,
) -> None:
    """Print every parameter's role, shape, init std, learning rate and multiplier."""
    from ssmscope.runs.cli.param_table import plan_table
    from ssmscope.ssm import ConfigError, MambaConfig, MambaLM, load_preset, plan

    try:
        cfg = MambaConfig(d_model=d_model, d_state=d_state, expand=expand, n_layers=n_layers,
                          vocab_size=vocab_size, discretization=discretization)
        p = load_preset(preset)
        with _meta_device():
            model = MambaLM(cfg)
        rows = plan(model, cfg, p, optimizer, lr)
    except ConfigError as exc:
        fail(str(exc))
    title = (f"{p.name} — N_u={cfg.d_inner}, N_x={cfg.d_state}, d_model={cfg.d_model}, "
             f"R={cfg.rank}, {cfg.discretization}, {optimizer}, base lr {lr:g} "
             f"(base width N_u0={p.base_n_u}, N_x0={p.base_n_x})")
    console.print(plan_table(rows, title, collapse_layers=not all_layers))
    uncovered = [r.name for r in rows if r.role is None]
    if uncovered:
        err_console.print(f"[bold yellow]warning:[/bold yellow] no rule covers {len(uncovered)} "
                          f"parameter(s): {', '.join(uncovered)}")
        raise typer.Exit(1)
    console.print(f"all {len(rows)} parameters covered by preset {p.name!r} ({p.source})")


DB_HELP = "DuckDB store (default: $SSMSCOPE_DB or ./ssmscope-data/ssmscope.duckdb)"


def _db(db: str | None):
    from pathlib import Path

    from ssmscope.runs.store.db import default_db_path

    return Path(db) if db else default_db_path()


@app.command()
def sweep(
    spec: Annotated[str, typer.Argument(help="Built-in spec (smoke, paper-figure, ...) or a .toml file")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (auto: decided on each worker)")] = "auto",
    workers: Annotated[int | None, typer.Option(help="local: parallel worker processes "
                                                     "(default: one per GPU on cuda, else 1)")] = None,
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    scan: Annotated[str, typer.Option(help="scan backend: auto, reference, fast or triton")] = "auto",
    retries: Annotated[int, typer.Option(help="retries of a failed run")] = 1,
    executor: Annotated[str, typer.Option(help="where runs execute: local, ray or slurm")] = "local",
    shards: Annotated[str | None, typer.Option(help="shard directory, shared by all workers "
                                                    "(default: $SSMSCOPE_SHARDS or <db dir>/shards)")] = None,
    address: Annotated[str | None, typer.Option(help="ray: cluster address (default: start a local cluster; "
                                                     "auto: the one `ray start` runs here; ray://host:10001)")] = None,
    cpus_per_task: Annotated[float, typer.Option(help="ray/slurm: CPUs per run (torch threads)")] = 1,
    gpus_per_task: Annotated[float, typer.Option(help="ray/slurm: GPUs per run (ray may use fractions)")] = 0,
    partition: Annotated[str | None, typer.Option(help="slurm: partition")] = None,
    time_min: Annotated[int, typer.Option(help="slurm: time limit per run, minutes")] = 60,
    array_parallelism: Annotated[int | None, typer.Option(help="slurm: most array tasks running at once")] = None,
    slurm_param: Annotated[list[str] | None, typer.Option(
        help="slurm: extra sbatch parameter KEY=VALUE (submitit's name, e.g. account=proj); repeatable")] = None,
    cluster: Annotated[str, typer.Option(help="slurm: slurm (sbatch), or local (submitit's local executor, "
                                              "jobs as subprocesses here: to try a setup)")] = "slurm",
) -> None:
    """Run a sweep (resumable: finished runs are skipped), then ingest it into the store.

    Runs execute here (--executor local), on a Ray cluster (ray) or on Slurm through submitit (slurm).

    Each run writes its Parquet shard into the shard directory; the store is filled here, at the end."""
    from pathlib import Path

    from ssmscope.runs.sweeps.executors import EXECUTORS, ExecutorOptions, make_executor, require
    from ssmscope.runs.cli.progress import RichSweepProgress
    from ssmscope.runs.sweeps.spec import load_spec
    from ssmscope.runs.sweeps.sweep import run_sweep
    from ssmscope.ssm import ConfigError
    from ssmscope.ssm.config import ScanBackend

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device={device!r}; allowed: auto, cpu, cuda")
    if executor not in EXECUTORS:
        fail(f"--executor={executor!r}; allowed: {', '.join(EXECUTORS)}")
    if workers is not None and (workers < 1 or executor != "local"):
        fail(f"--workers={workers}; allowed: a positive integer, with --executor local "
             "(ray and slurm: --cpus-per-task, --gpus-per-task)")
    if time_min < 1:
        fail(f"--time-min={time_min}; allowed: a positive integer")
    if retries < 0:
        fail(f"--retries={retries}; allowed: 0 or more")
    if cpus_per_task <= 0 or gpus_per_task < 0:
        fail("--cpus-per-task must be > 0 and --gpus-per-task >= 0")
    if scan not in {b.value for b in ScanBackend}:
        fail(f"--scan={scan!r}; allowed: {', '.join(b.value for b in ScanBackend)}")
    only = {"address": ("ray", address is not None), "partition": ("slurm", partition is not None),
            "array-parallelism": ("slurm", array_parallelism is not None), "slurm-param": ("slurm", bool(slurm_param)),
            "cluster": ("slurm", cluster != "slurm")}
    for flag, (owner, given) in only.items():
        if given and executor != owner:
            fail(f"--{flag} applies to --executor {owner} (got --executor {executor})")
    params = {}
    for item in slurm_param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--slurm-param={item!r}; allowed: KEY=VALUE")
        params[key] = value
    try:
        require(executor)
        s = load_spec(spec)
        ex = make_executor(executor, ExecutorOptions(
            workers=workers, address=address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task,
            partition=partition, time_min=time_min, cluster=cluster, array_parallelism=array_parallelism,
            slurm_params=params))
    except ConfigError as exc:
        fail(str(exc))
    path = _db(db)
    console.print(f"[bold]{s.name}[/bold]: {s.description}\n{s.n_runs} runs → {path} (executor: {executor})")
    try:
        report = run_sweep(s, path, device=device, scan=scan, retries=retries, executor=ex,
                           shard_root=Path(shards) if shards else None, progress=RichSweepProgress(console))
    except ConfigError as exc:
        fail(str(exc))
    st = report.statuses
    console.print(
        f"[bold]summary[/bold]: {st.get('completed', 0)} completed, {st.get('diverged', 0)} diverged, "
        f"{st.get('failed', 0)} failed, {report.skipped} skipped (already finished), {report.retried} retried "
        f"in {report.wall_s:.0f} s; ingested {report.ingest.loaded} new, {report.ingest.replaced} replaced"
    )
    for rid, errs in report.attempt_errors.items():  # attempts that failed and were retried
        for i, err in enumerate(errs[: len(errs) - (rid in report.failures)], 1):
            console.print(f"  [yellow]retried[/yellow] {rid} after attempt {i}: {err}", highlight=False)
    for rid, err in report.failures.items():
        console.print(f"  [red]failed[/red] {rid}: {err}", highlight=False)
    if report.interrupted:
        console.print("[yellow]interrupted[/yellow]: finished runs are stored; rerun the same command to resume")
        raise typer.Exit(130)


@app.command()
def ingest(
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    shards: Annotated[str | None, typer.Option(help="shard directory (default: <db dir>/shards)")] = None,
) -> None:
    """Load run shards into the store (idempotent: already loaded shards are skipped)."""
    from pathlib import Path

    from ssmscope.runs.store.db import StoreError, counts
    from ssmscope.runs.store.db import ingest as do_ingest

    path = _db(db)
    try:
        rep = do_ingest(path, Path(shards) if shards else None)
        n = counts(path)
    except StoreError as exc:
        fail(str(exc))
    console.print(f"ingested {rep.loaded} new, {rep.replaced} replaced, {rep.skipped} unchanged → {path}: "
                  f"{n['runs']} runs, {n['probes']} probe rows, {n['losses']} loss rows")


class _meta_device:
    """Build models on the meta device: `param show` needs shapes, not memory."""

    def __enter__(self):
        import torch

        self._ctx = torch.device("meta")
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _register_commands() -> None:
    """Commands that live in their own modules (one file per command)."""
    from ssmscope.runs.cli import dashboard as cli_app
    from ssmscope.runs.cli import slopes as cli_slopes
    from ssmscope.runs.cli import transfer as cli_transfer

    cli_slopes.register(app)
    cli_transfer.register(app)
    cli_app.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
