"""`ssmscope sweep`: run a sweep spec (resumable) on local workers, Ray or Slurm, then ingest it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ssmscope.runs.cli.bounds import check_options
from ssmscope.runs.cli.console import DB_HELP, console, db_path, fail, note, one_line_errors, status_counts, warn
from ssmscope.runs.sweeps.executor_names import ExecutorName, SlurmCluster  # light: enums only
from ssmscope.ssm.config import ScanBackend  # light: the enum and ConfigError, no torch


def register(app: typer.Typer) -> None:
    """Add the `sweep` command to the ssmscope app."""
    app.command()(sweep)


def sweep(
    spec: Annotated[str, typer.Argument(help="Built-in spec (smoke, paper-figure, ...) or a .toml file")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (auto: decided on each worker)")] = "auto",
    workers: Annotated[int | None, typer.Option(help="local: parallel worker processes "
                                                     "(default: one per GPU on cuda, else 1)")] = None,
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    scan: Annotated[ScanBackend, typer.Option(help="scan backend")] = ScanBackend.AUTO,
    retries: Annotated[int, typer.Option(help="retries of a failed run")] = 1,
    executor: Annotated[ExecutorName, typer.Option(help="where runs execute")] = ExecutorName.LOCAL,
    shards: Annotated[str | None, typer.Option(help="shard folder, shared by all workers (default: "
                                                    "$SSMSCOPE_SHARDS or <db dir>/<db name>.shards)")] = None,
    max_memory: Annotated[str, typer.Option(help="memory one run may use, e.g. 16G or 512M; auto: this machine's "
                                                 "(local executor), none: no check")] = "auto",
    ingest_every: Annotated[int, typer.Option(help="ingest while running after this many finished runs "
                                                   "(0: only at the end)")] = 8,
    ingest_interval: Annotated[float, typer.Option(help="... or after this many seconds, whichever comes first")] = 30,
    address: Annotated[str | None, typer.Option(help="ray: cluster address (default: start a local cluster; "
                                                     "auto: the one `ray start` runs here; ray://host:10001)")] = None,
    cpus_per_task: Annotated[float, typer.Option(help="ray/slurm: CPUs per run (torch threads)")] = 1,
    gpus_per_task: Annotated[float, typer.Option(help="ray/slurm: GPUs per run (ray may use fractions)")] = 0,
    partition: Annotated[str | None, typer.Option(help="slurm: partition")] = None,
    time_min: Annotated[int, typer.Option(help="slurm: time limit per run, minutes")] = 60,
    array_parallelism: Annotated[int | None, typer.Option(help="slurm: most array tasks running at once")] = None,
    slurm_param: Annotated[list[str] | None, typer.Option(
        help="slurm: extra sbatch parameter KEY=VALUE (submitit's name, e.g. account=proj); repeatable")] = None,
    cluster: Annotated[SlurmCluster, typer.Option(help="slurm: slurm (sbatch), or local (submitit's local executor, "
                                                       "jobs as subprocesses here: to try a setup)")] = (
        SlurmCluster.SLURM),
) -> None:
    """Run a sweep (resumable: finished runs are skipped), then ingest it into the store.

    Runs execute here (--executor local), on a Ray cluster (ray) or on Slurm through submitit (slurm).

    Each run writes its Parquet shard into the shard folder; finished runs are ingested into the store in
    small batches while the sweep runs, and the rest at its end."""
    from pathlib import Path

    from ssmscope.runs.cli.progress import RichSweepProgress
    from ssmscope.runs.sweeps.executors import ExecutorOptions, make_executor, require
    from ssmscope.runs.sweeps.memory import parse_size
    from ssmscope.runs.sweeps.preflight import AUTO, check_plan
    from ssmscope.runs.sweeps.spec import load_spec
    from ssmscope.runs.sweeps.sweep import run_sweep
    from ssmscope.ssm import ConfigError

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device={device!r}; allowed: auto, cpu, cuda")
    try:
        check_options({"--workers": workers, "--time-min": time_min, "--retries": retries,
                       "--cpus-per-task": cpus_per_task, "--gpus-per-task": gpus_per_task,
                       "--ingest-every": ingest_every, "--ingest-interval": ingest_interval,
                       "--array-parallelism": array_parallelism})
    except ConfigError as exc:
        fail(str(exc))
    try:
        memory = AUTO if max_memory.strip().lower() == AUTO else parse_size(max_memory)
    except ValueError:
        fail(f"--max-memory={max_memory!r}; allowed: auto, none, or a size such as 16G, 512M")
    params = {}
    for item in slurm_param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--slurm-param={item!r}; allowed: KEY=VALUE")
        params[key] = value
    options = ExecutorOptions(workers=workers, address=address, cpus_per_task=cpus_per_task,
                              gpus_per_task=gpus_per_task, partition=partition, time_min=time_min, cluster=cluster,
                              array_parallelism=array_parallelism, slurm_params=params)
    if options.misplaced(executor):  # an option of another executor: its own line, before anything runs
        fail(options.misplaced(executor))
    try:
        require(executor)
        s = load_spec(spec)
        ex = make_executor(executor, options)
        check_plan(s, device, executor, workers, memory, scan)  # before anything is printed or created
    except ConfigError as exc:
        fail(str(exc))
    path = db_path(db)
    console.print(f"[bold]{s.name}[/bold]: {s.description}\n{s.n_runs} runs → {path} (executor: {executor})")
    with one_line_errors(path):
        report = run_sweep(s, path, device=device, scan=scan, retries=retries, executor=ex,
                           shard_root=Path(shards) if shards else None, progress=RichSweepProgress(console),
                           max_memory=memory, live_every=ingest_every, live_interval_s=ingest_interval, notify=note)
    st = report.statuses
    others = f" (+{report.other_ingested} of other writers)" if report.other_ingested else ""
    console.print(
        f"[bold]summary[/bold]: {status_counts(st)}, {report.skipped} skipped (already finished), "
        f"{report.retried} retried in {report.wall_s:.0f} s; "
        f"ingested {report.own_ingested} of this sweep's runs{others}"
    )
    for rid, errs in report.attempt_errors.items():  # attempts that failed and were retried
        for i, err in enumerate(errs[: len(errs) - (rid in report.failures)], 1):
            console.print(f"  [yellow]retried[/yellow] {rid} after attempt {i}: {escape(err)}", highlight=False)
    for rid, err in report.failures.items():
        console.print(f"  [red]failed[/red] {rid}: {escape(err)}", highlight=False)
    if report.ingest_problems:
        warn(report.ingest_problems)
    if report.interrupted:
        if report.ingest_error:
            warn(report.ingest_error)
        console.print("[yellow]interrupted[/yellow]: finished runs are stored; rerun the same command to resume")
        raise typer.Exit(report.exit_code)
    if report.stopped_by:
        if report.ingest_error:
            warn(report.ingest_error)
        fail(f"{report.stopped_by} (stopped scheduling; finished runs are stored, rerun the same command to resume)")
    if report.ingest_error:
        fail(report.ingest_error)
    if report.lost:
        fail(report.lost_line())
    if report.failed_line():
        fail(report.failed_line(), code=report.exit_code)
