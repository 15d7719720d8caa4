"""`ssmscope param fit BASE --spec SPEC --out NEW.toml`: solve for the exponents a sweep's widths ask for.

    ssmscope param fit mup-ssm --spec paper-figure --out solved.toml
    ssmscope param fit sp --spec my-2d-grid.toml --out solved.toml --objective my-objective.toml --max-iter 6

Sweeps BASE with the spec's recipe (its widths, discretisations, optimizer, learning rate, seeds and
training; the spec's presets are ignored) with per-group update probes on, fits the objective
(runs.analysis.objective), shifts exponents (runs.analysis.solver), writes each iteration's preset beside
NEW.toml (named by a hash of its content, so a resumed solve reuses finished runs and a changed preset
never does), re-sweeps, and writes the chosen preset to NEW.toml: an ordinary preset file, labelled as
empirical for the widths it was fitted on, with every shift's raw fit and CI in its comments. Runs go to
the store like any sweep's (resumable). Exit code 0 when every target is flat, 1 when the solver stopped
short (the best measured preset is still written, and the tables say where it stalls), 2 for user errors.

The model family is the spec's (`train.model`: "mamba" for S6, "mamba2" for SSD); it picks the update groups
(probes.update_groups), the default objective and its init knobs (runs.analysis.objective), and BASE must be a
preset of the same family (`[preset] family`).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ssmscope.runs.cli.bounds import check_memory, check_options
from ssmscope.runs.cli.console import DB_HELP, console, db_path, err_console, fail, status_counts
from ssmscope.runs.cli.outfile import check_out
from ssmscope.ssm.config import FAMILY_OF_OPTIMIZER, ScanBackend  # light: enums, no torch

if TYPE_CHECKING:
    import polars as pl

    from ssmscope.runs.analysis.objective import Objective
    from ssmscope.runs.analysis.solver import Iteration, SolveResult
    from ssmscope.runs.sweeps.spec import RunConfig, SweepSpec


def param_fit(
    base: Annotated[str, typer.Argument(help="Preset to start from: built-in (sp, mup, mup-ssm) or a .toml file")],
    spec: Annotated[str, typer.Option(help="Sweep spec whose recipe is swept (widths, discretisations, optimizer, "
                                           "lr, seeds, training; its presets are ignored)")],
    out: Annotated[Path, typer.Option(help="Where to write the solved preset (.toml)")],
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    objective: Annotated[Path | None, typer.Option(help="TOML file with an objective table "
                                                        "(default: see docs/solver.md)")] = None,
    tolerance: Annotated[float | None, typer.Option(help="flat when |slope| ≤ this (default 0.15)")] = None,
    grid: Annotated[str | None, typer.Option(help="round exponents to multiples of this (default 1/4)")] = None,
    max_iter: Annotated[int | None, typer.Option(help="most re-sweeps (default 4)")] = None,
    name: Annotated[str | None, typer.Option(help="preset name (default: the file name of --out)")] = None,
    workers: Annotated[int | None, typer.Option(help="parallel worker processes for the sweeps")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    scan: Annotated[str, typer.Option(help="scan backend: " + ", ".join(b.value for b in ScanBackend))] = "auto",
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the seeds")] = 1000,
    force: Annotated[bool, typer.Option(help="overwrite --out if it exists")] = False,
) -> None:
    """Solve for the width exponents that flatten the objective's slopes, and write them as a preset."""
    from ssmscope.runs.analysis.objective import check_family, default_objective, load_objective, parse_grid
    from ssmscope.runs.analysis.slopes.bootstrap import bootstrap_bytes
    from ssmscope.runs.analysis.solver import solve
    from ssmscope.ssm.errors import ConfigError

    try:
        check_options({"--n-boot": n_boot, "--workers": workers, "--tolerance": tolerance, "--max-iter": max_iter})
        out = _check_out(out, force)
        _check_device(device, scan)
        base_raw, base_source, base_family = _read_preset(base)
        sweep_spec = _load_spec(spec)
        templates, family, design = _recipe(sweep_spec)
        model = _model_family(sweep_spec, templates, base, base_family)
        goal = load_objective(objective, model) if objective is not None else default_objective(model)
        check_family(goal, model)
        goal = _with_options(goal, tolerance, None if grid is None else parse_grid(grid), max_iter)
        if n_boot > 0:
            seeds = len({c.seed for c in templates})
            check_memory(f"--n-boot {n_boot} over {seeds} seeds", bootstrap_bytes(n_boot, seeds),
                         "lower --n-boot (the default is 1000)")
    except ConfigError as exc:
        fail(str(exc))
    store = db_path(db)
    solve_name = name or out.stem
    console.print(f"[bold]param fit[/bold] {base} on the recipe of {sweep_spec.name} ({len(templates)} runs per "
                  f"preset, design {design}, {model}, {family}) → {out}\n[bold]objective[/bold]")
    for line in goal.lines():
        console.print(f"  {line}", highlight=False)
    measure = _Measure(base=base, base_source=base_source, templates=templates, spec_name=sweep_spec.name,
                       out=out, store=store, workers=workers, device=device, scan=scan)
    try:
        result = solve(base_raw, measure, goal, group_roles=_group_roles(model), family=family, design=design,
                       n_boot=n_boot, on_iteration=_print_iteration)
        text = _solved_text(result, goal, base=base, spec=sweep_spec, store=store, name=solve_name,
                            templates=templates, design=design, paths=measure.paths)
    except ConfigError as exc:
        fail(str(exc))
    _write_atomic(out, text)
    _print_summary(result, goal, out)
    if not result.converged:
        raise typer.Exit(1)


# --- options ---------------------------------------------------------------------------------------
def _with_options(goal: Objective, tolerance: float | None, grid: Any, max_iter: int | None) -> Objective:
    """The objective with the options the command line gives (already checked against runs.cli.bounds)."""
    from dataclasses import replace as with_fields

    if tolerance is not None:
        goal = with_fields(goal, tolerance=tolerance)
    if grid is not None:
        goal = with_fields(goal, grid=grid)
    if max_iter is not None:
        goal = with_fields(goal, max_iterations=max_iter)
    return goal


def _check_device(device: str, scan: str) -> None:
    """--device and --scan name something that exists, and the scan can run on that device here."""
    from ssmscope.runs.sweeps.preflight import check_scan
    from ssmscope.ssm.errors import ConfigError

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device={device!r}; allowed: auto, cpu, cuda")
    if scan not in {b.value for b in ScanBackend}:
        raise ConfigError(f"--scan={scan!r}; allowed: {', '.join(b.value for b in ScanBackend)}")
    check_scan(scan, device, "local")


def _check_out(out: Path, force: bool) -> Path:
    from ssmscope.ssm.errors import ConfigError

    out = Path(out)
    if out.suffix != ".toml":
        raise ConfigError(f"--out={str(out)!r}; allowed: a .toml file name")
    if out.exists() and not force:
        raise ConfigError(f"--out {out} exists; pass --force to overwrite it")
    check_out(out)  # the folder exists and can be written: known now, not after the solve
    return out.absolute()


def _read_preset(base: str) -> tuple[dict[str, Any], str, str]:
    """The base preset's raw table (validated as a preset), its source label and its model family."""
    from ssmscope.ssm.presets import parse_preset
    from ssmscope.ssm.tomlfiles import read_builtin_or_file

    raw, source = read_builtin_or_file("ssmscope.ssm", "presets", "preset", base)
    preset = parse_preset(raw, source)
    return raw, source, str(preset.family)


def _model_family(spec: SweepSpec, templates: list[RunConfig], base: str, base_family: str) -> str:
    """The spec's model family (train.model), which BASE must share."""
    from ssmscope.ssm.errors import ConfigError

    models = sorted({c.model for c in templates})
    if len(models) != 1:
        raise ConfigError(f"spec {spec.name}: the solver fits one model family (the spec has {', '.join(models)})")
    if models[0] != base_family:
        raise ConfigError(f"base preset {base} is a {base_family} preset but spec {spec.name} sweeps {models[0]} "
                          f"(train.model); give a {models[0]} preset")
    return models[0]


def _load_spec(spec: str) -> SweepSpec:
    from ssmscope.runs.sweeps.spec import load_spec

    return load_spec(spec)


def _recipe(spec: SweepSpec) -> tuple[list[RunConfig], str, str]:
    """The spec's runs with the preset left open and group probes on (one per distinct recipe), the
    optimizer family, and the width design the grid allows."""
    from ssmscope.ssm.errors import ConfigError

    templates = list({replace(c, preset="", group_probes=True): None for c in spec.runs})
    families = {FAMILY_OF_OPTIMIZER[c.optimizer] for c in templates}
    if len(families) != 1 or len({c.optimizer for c in templates}) != 1:
        raise ConfigError(f"spec {spec.name}: the solver fits one optimizer at a time (the spec has "
                          f"{', '.join(sorted({c.optimizer for c in templates}))}); give a spec with one")
    if len({c.lr for c in templates}) != 1:
        raise ConfigError(f"spec {spec.name}: the solver fits one learning rate (the spec has "
                          f"{len({c.lr for c in templates})}); give a spec with one lr")
    n_u = {c.n_u for c in templates}
    n_x = {c.n_x for c in templates}
    if all(c.n_u == c.n_x for c in templates):
        design = "joint"
    elif len(n_u) > 1 and len(n_x) > 1:
        design = "2d"
    else:
        design = "n_u" if len(n_u) > 1 else "n_x"
    axis = n_u if design in ("joint", "n_u", "2d") else n_x
    if len(axis) < 3:
        raise ConfigError(f"spec {spec.name}: a slope needs 3 or more widths on each axis (got {sorted(axis)})")
    return templates, families.pop(), design


def _group_roles(model: str = "mamba") -> dict[str, tuple[str, ...]]:
    """Which roles each per-group update probe of the model family moves (probes.update_groups)."""
    from ssmscope.probes.update_groups import update_groups

    return {group: tuple(roles) for group, roles in update_groups(model).items()}


# --- sweeping one preset ---------------------------------------------------------------------------
class _Measure:
    """measure(raw, k) for runs.analysis.solver.solve: write the preset, sweep it, read its probe rows."""

    def __init__(self, *, base: str, base_source: str, templates: list[RunConfig], spec_name: str, out: Path,
                 store: Path, workers: int | None, device: str, scan: str) -> None:
        self.base, self.base_source, self.templates = base, base_source, templates
        self.spec_name, self.out, self.store = spec_name, out, store
        self.workers, self.device, self.scan = workers, device, scan
        self.paths: dict[int, str] = {}

    def preset_ref(self, raw: dict[str, Any], k: int) -> str:
        """What the runs name as their preset: a built-in base by its name, else a file of this iteration's
        table named by its content's hash (a preset file edited later never passes for the one measured)."""
        from ssmscope.runs.analysis.preset_toml import render
        from ssmscope.ssm.presets import parse_preset

        if k == 0 and not self.base_source.endswith(".toml"):  # a built-in: its runs are shared with other sweeps
            return self.base
        text = render(raw, [f"ssmscope param fit: iteration {k} of the solve written to {self.out.name} "
                            f"(recipe of {self.spec_name}); an intermediate preset, kept so that its runs stay "
                            "reproducible"])
        parse_preset(tomllib.loads(text), f"iteration {k}")
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        path = self.out.with_name(f"{self.out.stem}.iter{k}-{digest}.toml")
        if not path.exists():
            _write_atomic(path, text)
        return str(path)

    def __call__(self, raw: dict[str, Any], k: int) -> pl.DataFrame:
        from ssmscope.runs.cli.progress import RichSweepProgress
        from ssmscope.runs.store.db import load_probe_frame
        from ssmscope.runs.sweeps.spec import SweepSpec
        from ssmscope.runs.sweeps.sweep import run_sweep
        from ssmscope.ssm.errors import ConfigError

        ref = self.preset_ref(raw, k)
        self.paths[k] = ref
        runs = tuple(replace(c, preset=ref) for c in self.templates)
        spec = SweepSpec(name=f"param-fit:{self.out.stem}", description=f"param fit iteration {k} ({ref})",
                         runs=runs, source="ssmscope param fit")
        console.print(f"\n[bold]iteration {k}[/bold]: sweeping {ref} ({len(runs)} runs; finished runs are reused)",
                      highlight=False)
        report = run_sweep(spec, self.store, device=self.device, workers=self.workers, scan=self.scan,
                           progress=RichSweepProgress(console))
        st = report.statuses
        console.print(f"  {status_counts(st)}, {report.skipped} reused in {report.wall_s:.0f} s",
                      highlight=False)
        if report.interrupted:
            raise typer.Exit(130)
        ids = [c.run_id for c in runs]
        frame = load_probe_frame(self.store, {"run_id": ids})
        if frame.is_empty():
            raise ConfigError(f"iteration {k}: no probe rows came back from the sweep of {ref} "
                              f"(failures: {'; '.join(report.failures.values()) or 'none recorded'})")
        # Runs reused from another sweep keep their spec name: one solve iteration is one configuration.
        return frame.drop("spec", strict=False)


# --- output ------------------------------------------------------------------------------------------
def _solved_text(result: SolveResult, goal: Objective, *, base: str, spec: SweepSpec, store: Path, name: str,
                 templates: list[RunConfig], design: str, paths: dict[int, str]) -> str:
    """The chosen preset as TOML: provenance, the empirical label, the objective and the outcome in the
    header; every applied shift with its raw fit and CI above its role."""
    import subprocess

    from ssmscope.runs.analysis.preset_toml import render
    from ssmscope.runs.analysis.solver import preset_notes
    from ssmscope.ssm.presets import parse_preset

    n_u = sorted({c.n_u for c in templates})
    n_x = sorted({c.n_x for c in templates})
    widths = (f"N_u = N_x ∈ {{{', '.join(map(str, n_u))}}}" if design == "joint"
              else f"N_u ∈ {{{', '.join(map(str, n_u))}}} × N_x ∈ {{{', '.join(map(str, n_x))}}}")
    chosen = result.iterations[result.chosen]
    first = result.iterations[0]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    header = [
        f"{name}: an EMPIRICAL preset, solved by `ssmscope param fit {base} --spec {spec.name}`",
        f"on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} (ssmscope {commit or 'unknown commit'}).",
        f"Fitted on {widths} ({design} design), recipe of {spec.source}: {templates[0].optimizer} lr "
        f"{templates[0].lr:g}, {templates[0].steps} steps, dt ∈ [{templates[0].dt_min:g}, {templates[0].dt_max:g}].",
        "It flattens what those widths measured; it is not a derivation, and outside that width range it is",
        "an extrapolation (docs/solver.md; docs/theory.md puts it beside µP-SSM).",
        f"Store: {store}; iteration presets: {', '.join(f'{k}: {p}' for k, p in sorted(paths.items()))}.",
        "",
        "Objective:",
        *(f"  {line}" for line in goal.lines()),
        "",
        f"Outcome: {'converged' if result.converged else 'NOT converged'} — {result.reason}.",
        f"Chosen: iteration {result.chosen}; max |slope| over the targets {_num(first.worst)} (iteration 0) → "
        f"{_num(chosen.worst)}; {int(chosen.targets.get_column('flat').sum())} of {chosen.targets.height} "
        "target cells flat.",
    ]
    raw = dict(result.raw)
    raw["preset"] = {**raw.get("preset", {}), "name": name,
                     "description": f"Empirical: solved from {base} on {spec.name} ({widths}); see the comments"}
    text = render(raw, header, preset_notes(result))
    parse_preset(tomllib.loads(text), name)
    return text


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a killed process never leaves half a preset."""
    from ssmscope.ssm.errors import ConfigError

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def _print_iteration(it: Iteration) -> None:
    """The targets of one iteration, then the shifts proposed from them."""
    import polars as pl

    from ssmscope.runs.analysis.solver import shift_table

    targets = it.targets
    worst = "—" if it.worst is None else f"{it.worst:.3f}"
    console.print(f"[bold]targets[/bold] (iteration {it.index}): {int(targets['flat'].sum())} of {targets.height} "
                  f"flat; max |slope| {worst}", highlight=False)
    shown = (targets.select("discretization", "target", "layer", "convention", "term", "estimate", "ci_low",
                            "ci_high", "regime_ratio", "regime", "flat")
             .with_columns(pl.col(pl.Float64).round(3)))
    console.print(_rich(shown))
    if it.shifts:
        console.print(f"[bold]shifts[/bold] proposed from iteration {it.index} (0 = within tolerance or not resolved "
                      "from noise):")
        console.print(_rich(shift_table(it.shifts).with_columns(pl.col(pl.Float64).round(3))))


def _print_summary(result: SolveResult, goal: Objective, out: Path) -> None:
    import polars as pl

    from ssmscope.runs.analysis.solver import before_after

    console.print(f"\n[bold]before / after[/bold] (iteration 0 → iteration {result.chosen}):")
    console.print(_rich(before_after(result).with_columns(pl.col(pl.Float64).round(3))))
    state = "[green]converged[/green]" if result.converged else "[yellow]not converged[/yellow]"
    console.print(f"{state}: {result.reason}. Wrote {out} (iteration {result.chosen}).", highlight=False)
    if not result.converged:
        failing = result.iterations[result.chosen].targets.filter(~pl.col("flat"))
        cells = ", ".join(f"{r['discretization']} {r['target']} layer {r['layer']} ({_num(r['estimate'])})"
                          for r in failing.iter_rows(named=True))
        err_console.print(f"stalls at: {cells}", highlight=False, soft_wrap=True)


def _rich(frame: pl.DataFrame):
    """A polars frame as a rich table (nulls as —)."""
    from rich.table import Table

    table = Table(header_style="bold")
    for col in frame.columns:
        table.add_column(col, justify="right" if frame.schema[col].is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*("—" if v is None else str(v) for v in row))
    return table
