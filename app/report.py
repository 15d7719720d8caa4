"""The reproduction report: one self-contained HTML file (and a PDF beside it) that holds the paper's message.

    python -m ssmscope.app.report --db STORE --out report.html [--sweep NAME] [--where …] [--pdf]

`ssmscope report` (runs/cli/report.py) checks its options and runs this module in a child process, as
`ssmscope app` runs the dashboard: nothing under runs/ imports app/ (docs/architecture.md), and the report
needs the dashboard's figure (app.paper_figure → app.figures). Per sweep of the selection the file holds:

- the coordinate check in the paper's layout (log2‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖ per layer against log2 width, presets
  as columns, one y range per row), one figure per discretisation · optimizer · lr;
- the paper's slope table twice: coloured by stability (the measured verdict: flat / grows / vanishes) and by
  agreement with the theory (agrees / disagrees), then every cell's exponent, CI, prediction, wording
  (runs.analysis.export.record_words), regime (runs.analysis.regime) and running exponents
  (runs.analysis.running: first and last local slope, trend);
- learning-rate transfer where the sweep holds an LR grid: the drift of log2 η* and, per width, η* and the loss
  at it (runs.analysis.transfer.optima, drift);
- provenance from the store's runs rows (ssmscope version and git commit, torch, device, scan backend, host,
  dates) and the exact commands that regenerate every number.

It opens offline: plotly.js is inlined once, nothing is loaded from elsewhere (tests/test_report.py checks
that no src/href points outside and no http(s) address appears outside plotly.js). The PDF is the same page
printed by a headless Chromium (app.export.find_chromium). Progress goes to stderr, one line per step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ssmscope.runs.analysis import export
from ssmscope.runs.analysis.selection import filter_expr, parse_filters, pushdown_filters
from ssmscope.runs.analysis.slope_tables import slope_table
from ssmscope.runs.analysis.slopes import AGREE_TOL, FLAT_TOL, PAPER_COLUMNS
from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.runs.analysis.vocabulary import Agreement, TransferStatus, Verdict
from ssmscope.runs.store import db as store
from ssmscope.runs.store.errors import StoreError
from ssmscope.runs.store.schema import FILTER_COLUMNS
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.tomlfiles import builtin_toml_names

Progress = Callable[[str], None]

STABILITY_COLOURS = {Verdict.FLAT: "#e8f1fb", Verdict.GROWS: "#fde2c8", Verdict.VANISHES: "#e3d7f3"}
"""Background of a cell by the measured verdict (stability): flat blue-grey, grows orange, vanishes violet."""
AGREEMENT_COLOURS = {Agreement.AGREES: "#d4edda", Agreement.DISAGREES: "#f8d7da"}
"""Background of a cell by its agreement with the prediction: green agrees, red disagrees."""
PROVENANCE_COLUMNS = ("ssmscope_version", "git_commit", "torch_version", "device", "scan", "hostname")
"""Run columns that say what made the numbers (each value and how many runs had it)."""
MIN_LRS = 3
"""Learning rates per width that make an LR grid (as `ssmscope transfer` requires)."""


def _note(message: str) -> None:
    print(f"report: {message}", file=sys.stderr, flush=True)


# --- what the store holds --------------------------------------------------------------------------
@dataclass
class SweepSection:
    """Everything the report says about one sweep."""

    name: str
    runs: pl.DataFrame
    figures: list[tuple[str, object]] = field(default_factory=list)  # (caption, plotly figure)
    axis_label: str = ""
    paper: pl.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    drift: pl.DataFrame | None = None
    optima: pl.DataFrame | None = None
    loss_used: str = ""
    commands: list[tuple[str, str]] = field(default_factory=list)  # (command, what it regenerates)
    problems: list[str] = field(default_factory=list)


def select_sweeps(runs: pl.DataFrame, sweeps: Sequence[str]) -> list[str]:
    """The sweeps to report: those named (each must be in the store), else every sweep of the store."""
    have = sorted(runs["spec"].unique().to_list()) if not runs.is_empty() else []
    if not have:
        raise ConfigError("the store holds no runs; run a sweep first, e.g. `ssmscope sweep smoke`")
    unknown = [s for s in sweeps if s not in have]
    if unknown:
        raise ConfigError(f"--sweep {unknown[0]}: no such sweep in the store; it holds {', '.join(have)}")
    return list(dict.fromkeys(sweeps)) or have


def _q(text: object) -> str:
    """A command-line argument quoted when it needs it."""
    import shlex

    return shlex.quote(str(text))


def commands_for(section: SweepSection, db: Path, where: Sequence[str], convention: str, design: str,
                 fixed: int | None) -> list[tuple[str, str]]:
    """The commands that regenerate the section's numbers, in the order they run."""
    spec = section.name
    sweep_arg = spec if spec in builtin_toml_names("ssmscope.runs.sweeps", "specs") else f"{spec}.toml"
    sel = [f"--where spec={_q(spec)}", *(f"--where {_q(w)}" for w in where)]
    if fixed is not None:
        sel.append(f"--where {'n_x' if design == 'n_u' else 'n_u'}={fixed}")
    base = f"--db {_q(db)} " + " ".join(sel)
    out = [(f"ssmscope sweep {_q(sweep_arg)} --db {_q(db)}",
            "the runs" + ("" if sweep_arg == spec else f" ({sweep_arg}: this sweep's spec file, not a built-in one)"))]
    fit = f"--width {design} --convention {convention}"
    out.append((f"ssmscope slopes {base} {fit} --format md", "the slope table (paper layout, last step, layer mean)"))
    out.append((f"ssmscope slopes {base} {fit} --table full --layers each --format md",
                "every cell per layer: the figure's slopes, regime and trend"))
    out.append((f"ssmscope slopes {base} {fit} --fit running --table full --format md", "the running exponents"))
    if section.drift is not None:
        tsel = f"--db {_q(db)} --where spec={_q(spec)} --use {section.loss_used}"
        out.append((f"ssmscope transfer {tsel} --table drift --format md", "the drift of the optimal learning rate"))
        out.append((f"ssmscope transfer {tsel} --table optima --format md", "η* and the loss at it per width"))
    return out


def build_sections(db: Path, *, sweeps: Sequence[str] = (), where: Sequence[str] = (), convention: str = "rms",
                   n_boot: int = DEFAULT_N_BOOT, progress: Progress = _note) -> list[SweepSection]:
    """Read the store and compute every section (the HTML is written by `render`)."""
    from ssmscope.app.frames import width_axes
    from ssmscope.app.paper_figure import coord_check_figure

    filters = parse_filters(list(where))
    pushed = pushdown_filters(filters, FILTER_COLUMNS) or {}
    runs = store.load_runs(db, pushed or None)
    run_filters = [f for f in filters if f.column in runs.columns]
    runs = runs.filter(filter_expr(run_filters)) if run_filters else runs
    names = select_sweeps(runs, sweeps)
    sections = []
    for name in names:
        section = SweepSection(name, runs.filter(pl.col("spec") == name))
        progress(f"{name}: reading probes of {section.runs.height} runs")
        frame = store.load_probe_frame(db, {**pushed, "spec": name})
        frame = frame.filter(filter_expr(filters)) if filters else frame
        frame = frame.filter(pl.col("group").fill_null("") == "")
        design, fixed = "joint", None
        axes = width_axes(frame.select("n_u", "n_x").unique())
        if frame.is_empty():
            section.problems.append("no probe records in the selection")
        elif not axes:
            section.problems.append("fewer than two widths on every width axis: nothing to plot or fit")
        else:
            axis = axes[0]
            design, fixed = axis.design, axis.fixed
            section.axis_label = axis.label
            on_axis = axis.select(frame).drop("width")
            progress(f"{name}: fitting the slope table ({axis.label})")
            section.paper = slope_table(on_axis, table="paper", convention=convention, design=design, layers="mean",
                                        step="last", n_boot=n_boot)
            section.notes = export.coincidence_notes(on_axis, design)
            groups = on_axis.select("discretization", "optimizer", "lr").unique().sort("discretization", "optimizer",
                                                                                      "lr")
            for disc, opt, lr in groups.iter_rows():
                part = on_axis.filter((pl.col("discretization") == disc) & (pl.col("optimizer") == opt)
                                      & (pl.col("lr") == lr))
                caption = f"{disc} · {opt} · lr {lr:g}"
                progress(f"{name}: drawing the coordinate check, {caption}")
                try:
                    fig = coord_check_figure(part, convention=convention, axis=axis.key, n_boot=min(n_boot, 200),
                                             y_range="row", pred_lines=True, title=f"{name} · {caption}")
                except ConfigError as exc:
                    section.problems.append(f"{caption}: {exc}")
                    continue
                section.figures.append((caption, fig))
        _transfer(section, db, progress, n_boot)
        section.commands = commands_for(section, db, where, convention, design, fixed)
        sections.append(section)
    return sections


def _transfer(section: SweepSection, db: Path, progress: Progress, n_boot: int) -> None:
    """η* per width and its drift, when the sweep holds an LR grid (≥ MIN_LRS learning rates at some width)."""
    from ssmscope.runs.analysis.transfer import drift, final_losses, optima

    losses = store.load_losses(db, {"spec": section.name})
    losses = losses.filter(pl.col("run_id").is_in(section.runs["run_id"].to_list()))
    if losses.is_empty():
        return
    use = "eval_loss" if losses["eval_loss"].is_not_null().any() else "train_loss"
    final = final_losses(losses, use=use)
    if final.is_empty():
        return
    per_width = final.group_by("preset", "discretization", "optimizer", "n_u", "n_x").agg(pl.col("lr").n_unique())
    if per_width["lr"].max() < MIN_LRS:
        return
    progress(f"{section.name}: learning-rate transfer ({use})")
    section.optima = optima(final, n_boot=n_boot)
    section.drift = drift(section.optima, final, n_boot=n_boot)
    section.loss_used = use


# --- HTML ------------------------------------------------------------------------------------------
CSS = """
body { font-family: Inter, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .86em; }
pre { background: #f6f6f6; padding: .6em; white-space: pre-wrap; word-break: break-all; }
.legend span { display: inline-block; padding: .1em .5em; margin-right: .4em; border: 1px solid #ccc; }
.caption { color: #555; font-size: .85em; max-width: 1100px; }
.problem { color: #a33; }
.figure { page-break-inside: avoid; break-inside: avoid; }
@media print { body { max-width: none; margin: 0; } h2 { page-break-before: always; } }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}".replace("-", "−")
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "") -> str:
    """An HTML table; cells are given as HTML already ('<td …>…</td>' or plain text, which is escaped)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{_e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _frame_table(frame: pl.DataFrame, columns: Sequence[str], *, digits: int = 3) -> str:
    rows = []
    for rec in frame.select(columns).iter_rows(named=True):
        rows.append([f'<td class="num">{_num(v, digits)}</td>' if isinstance(v, float | int) and not isinstance(v, bool)
                     else _e(v) for v in rec.values()])
    return _table(columns, rows)


def _slope_tables(paper: pl.DataFrame) -> str:
    """The paper's compact table twice: by stability, then by agreement; then every cell's details."""
    compact = export.compact_paper(paper)
    keys, grouped = export.paper_rows(paper)
    titles = list(compact.labels)
    key_cols = compact.keys
    by = {"stability": [], "agreement": []}
    details = []
    for i, (row_key, cells) in enumerate(grouped.items()):
        keys_shown = [str(v) for k, v in zip(keys, row_key, strict=True) if k in key_cols]
        stab_row, agree_row = list(keys_shown), list(keys_shown)
        for column, title in zip(PAPER_COLUMNS, titles, strict=True):
            terms = cells.get(column, [])
            label = compact.labels[title][i]
            verdicts = {t["verdict"] for t in terms if t.get("verdict")}
            verdict = next(iter(verdicts)) if len(verdicts) == 1 else ""
            agreement = compact.agreements[title][i]
            stab_row.append(f'<td class="stab-{_e(verdict or "none")}" style="background:'
                            f'{STABILITY_COLOURS.get(verdict, "#fff")}" title="{_e(verdict)}">{_e(label)}</td>')
            agree_row.append(f'<td class="agree-{_e(agreement.replace(" ", "-"))}" style="background:'
                             f'{AGREEMENT_COLOURS.get(agreement, "#fff")}" title="{_e(agreement)}">{_e(label)}</td>')
            for t in terms:
                details.append([*keys_shown, title, f'<td class="num">{_num(t["estimate"], 3)}</td>',
                                f"[{_num(t['ci_low'], 2)}, {_num(t['ci_high'], 2)}]" if t.get("ci_low") is not None
                                else "", export.exponent_text(t["predicted"], t.get("log_x")),
                                export.record_words(t), t.get("agreement") or "",
                                f'<td class="num">{_num(t.get("regime_ratio"), 2)}</td>', t.get("regime") or "",
                                f'<td class="num">{_num(t.get("local_first"), 2)}</td>',
                                f'<td class="num">{_num(t.get("local_last"), 2)}</td>', t.get("trend") or ""])
        by["stability"].append(stab_row)
        by["agreement"].append(agree_row)
    header = [*key_cols, *titles]
    stab_legend = "".join(f'<span style="background:{c}">{v}</span>' for v, c in STABILITY_COLOURS.items())
    agree_legend = "".join(f'<span style="background:{c}">{v}</span>' for v, c in AGREEMENT_COLOURS.items())
    return (f'<h3>Slope table, coloured by stability</h3><p class="legend">{stab_legend} — the measured exponent '
            f"alone: flat when |s| ≤ {FLAT_TOL}, grows above, vanishes below −{FLAT_TOL}.</p>"
            + _table(header, by["stability"], cls="slopes stability")
            + f'<h3>Slope table, coloured by agreement with the theory</h3><p class="legend">{agree_legend} — '
            f"|s − predicted| ≤ {AGREE_TOL} or the CI holds the prediction (docs/slopes.md).</p>"
            + _table(header, by["agreement"], cls="slopes agreement")
            + "<h3>Every cell: exponent, prediction, regime and running exponents</h3>"
            + _table([*key_cols, "quantity", "s", "95% CI", "predicted", "reading", "agreement", "‖Δq‖/‖q₀‖",
                      "regime", "first local s", "last local s", "trend"], details, cls="details"))


def _transfer_html(section: SweepSection) -> str:
    drift_cols = [c for c in ("preset", "discretization", "optimizer", "drift", "ci_low", "ci_high", "n_interior",
                              "n_widths", "reason") if c in section.drift.columns]
    opt = section.optima.with_columns(pl.col("status").replace({TransferStatus.INTERIOR.value: "interior"}))
    opt_cols = [c for c in ("preset", "discretization", "optimizer", "width", "lr_opt", "ci_low", "ci_high",
                            "loss_at_opt", "status", "n_lrs", "n_diverged") if c in opt.columns]
    return ("<h3>Learning-rate transfer</h3>"
            f'<p class="caption">Final {section.loss_used} against the learning rate per width; η* = the vertex of a '
            "parabola in log2 lr through the best grid point and its neighbours (CI: seed bootstrap); drift = the "
            "slope of log2 η* against log2 width over widths with an interior optimum. A drift near 0: η* "
            "transfers.</p>"
            "<h4>Drift of η*</h4>" + _frame_table(section.drift, drift_cols)
            + "<h4>η* and the loss at it, per width</h4>" + _frame_table(opt, opt_cols, digits=4))


def _provenance(section: SweepSection) -> str:
    runs = section.runs
    rows = [["spec", section.name], ["runs", ", ".join(f"{n} {s}" for s, n in
                                                       runs.group_by("status").len().sort("status").iter_rows())]]
    for col in PROVENANCE_COLUMNS:
        values = runs.group_by(col).len().sort("len", descending=True)
        text = "; ".join(f"{v or '(unknown)'}" + (f" ({n} runs)" if values.height > 1 else "")
                         for v, n in values.iter_rows())
        rows.append([{"scan": "scan backend that ran"}.get(col, col.replace("_", " ")), text])
    started = [s for s in runs["started_at"].to_list() if s]
    finished = [s for s in runs["finished_at"].to_list() if s]
    rows.append(["date", f"{min(started) if started else '?'} … {max(finished) if finished else '?'} (UTC)"])
    return "<h3>Provenance</h3>" + _table(["", ""], rows, cls="provenance")


def _section_html(section: SweepSection, include_plotlyjs: bool) -> tuple[str, bool]:
    parts = [f'<h2 id="sweep-{_e(section.name)}">Sweep {_e(section.name)}</h2>']
    if section.axis_label:
        parts.append(f'<p class="caption">Width axis: {_e(section.axis_label)}. Runs that diverged or failed are '
                     "marked ✕ and left out of the means and fits.</p>")
    parts += [f'<p class="problem">{_e(p)}</p>' for p in section.problems]
    if section.figures:
        parts.append("<h3>Coordinate check</h3><p class=\"caption\">log₂ of ‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖ per layer against "
                     "log₂ width; presets as columns, one y range per row (the paper's layout). Line: mean over seeds, "
                     "band: min–max, dots: single runs; dash-dot: the predicted slope through each layer's mean; "
                     "dashed grey: reference slopes 0, ±½, ±1.</p>")
    for caption, fig in section.figures:
        div = fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs,
                          config={"displaylogo": False},
                          default_width="100%", default_height=f"{fig.layout.height or 900}px")
        include_plotlyjs = False
        parts.append(f'<div class="figure" data-caption="{_e(caption)}">{div}</div>')
    if section.paper is not None and not section.paper.is_empty():
        parts.append(_slope_tables(section.paper))
        caption = export.compact_caption(section.paper, section.notes)
        parts.append(f'<p class="caption">{_e(caption)}</p>')
    if section.drift is not None:
        parts.append(_transfer_html(section))
    parts.append(_provenance(section))
    cmds = "\n".join(f"{c}\n    # {what}" for c, what in section.commands)
    parts.append(f"<h3>Commands that regenerate these numbers</h3><pre class=\"commands\">{_e(cmds)}</pre>")
    return "\n".join(parts), include_plotlyjs


def render(sections: Sequence[SweepSection], *, db: Path, title: str = "ssmscope reproduction report",
           command: str | None = None) -> str:
    """The report as one HTML page: plotly.js inlined once (offline), every section after it."""
    from plotly.offline import get_plotlyjs

    from ssmscope.runs.analysis.slopes import CONFIDENCE

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#sweep-{_e(s.name)}">{_e(s.name)}</a> ({s.runs.height} runs)</li>' for s in sections)
    body, include = [], False  # plotly.js goes in the head, once
    for s in sections:
        text, include = _section_html(s, include)
        body.append(text)
    made = f"<code>{_e(command)}</code> · " if command else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{_e(title)}</h1>
<p class="caption">Store <code>{_e(db)}</code> · built {now} by ssmscope {_e(_version())} · {made}
slopes: log2‖·‖ = a + s·log2 width, {CONFIDENCE:.0%} CI (seed bootstrap ∪ OLS). This file needs no network.</p>
<ul>{toc}</ul>
{''.join(body)}
</body></html>
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ssmscope")
    except Exception:
        return "0+unknown"


def print_pdf(html_path: Path, pdf_path: Path, chromium: str, timeout_s: float = 180) -> None:
    """The page printed by a headless Chromium (scripts run first: the figures are drawn before printing)."""
    with tempfile.TemporaryDirectory(prefix="ssmscope-pdf-") as profile:
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", "--no-pdf-header-footer", "--virtual-time-budget=30000",
                               f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0 or not pdf_path.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"Chromium could not print the PDF (exit {done.returncode}): {last}")


def write_report(db: Path, out: Path, *, sweeps: Sequence[str] = (), where: Sequence[str] = (),
                 convention: str = "rms", n_boot: int = DEFAULT_N_BOOT, pdf: bool = False,
                 progress: Progress = _note, command: str | None = None) -> list[Path]:
    """Build the report from the store at `db`, write it to `out` (and the PDF beside it); the files written."""
    from ssmscope.app.export import find_chromium

    sections = build_sections(Path(db), sweeps=sweeps, where=where, convention=convention, n_boot=n_boot,
                              progress=progress)
    progress("writing the HTML (plotly.js inlined)")
    out = Path(out)
    out.write_text(render(sections, db=Path(db), command=command), encoding="utf-8")
    written = [out]
    if pdf:
        chromium = find_chromium()
        if chromium is None:
            progress("no Chromium found (apt-get install chromium, or set BROWSER_PATH): no PDF")
        else:
            progress(f"printing the PDF with {chromium}")
            target = out.with_suffix(".pdf")
            print_pdf(out, target, chromium)
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ssmscope.app.report`: what `ssmscope report` runs. User mistakes: one line, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m ssmscope.app.report", description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sweep", action="append", default=[])
    parser.add_argument("--where", action="append", default=[])
    parser.add_argument("--convention", default="rms")
    parser.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT)
    parser.add_argument("--pdf", action="store_true")
    parser.add_argument("--command", default=None, help="the command line to print in the report")
    args = parser.parse_args(argv)
    try:
        if not args.db.is_file():
            raise ConfigError(f"no store at {args.db}; run `ssmscope sweep smoke --db {args.db}`")
        written = write_report(args.db, args.out, sweeps=args.sweep, where=args.where, convention=args.convention,
                               n_boot=args.n_boot, pdf=args.pdf, command=args.command)
    except (ConfigError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as exc:  # Chromium failed to print: the HTML is there
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    for path in written:
        _note(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
