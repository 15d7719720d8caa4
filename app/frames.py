"""Plot-ready frames for the dashboard: frame → frame transforms, no Streamlit, no plotting.

Everything here reshapes what the store and runs/ already computed: norms come from runs.analysis.norms,
slopes from runs.analysis.slopes, optima from runs.analysis.transfer. What is decided here is only presentation:
which runs form one width axis, how seeds are summarised on screen (the mean of log2‖·‖ with a
min–max band over seeds), which runs are flagged (diverged, failed, zero or non-finite norms), and
how rows and columns of a figure are labelled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from ssmscope.runs.analysis import export
from ssmscope.runs.analysis.export import exponent_text, record_words
from ssmscope.runs.analysis.norms import norm_expr
from ssmscope.runs.analysis.slopes.fit import on_axis
from ssmscope.runs.store.schema import EXCLUDED_STATUSES, PARAMETERIZATION_KEYS, WIDTH_KEYS
from ssmscope.ssm.predictions import Convention

# --- orders and labels -------------------------------------------------------------------------
PRESET_ORDER = export.PRESET_ORDER
"""The paper's order of parameterizations, SP → µP → µP-SSM (as the tables); presets not listed follow by name."""
DISC_ORDER = ("zoh", "euler")
FLAGGED_STATUSES = EXCLUDED_STATUSES
"""Run statuses left out of the seed summaries and marked on the figures (as in runs.analysis.slopes)."""


@dataclass(frozen=True)
class Row:
    """One row of the coordinate-check figure: a probed (site, quantity) pair."""

    key: str  # URL-safe name: x, y, dx, dy, ...
    site: str
    quantity: str
    title: str  # short label of the row
    meaning: str = ""  # what the row measures, in words (the caption under a figure)


ROWS: tuple[Row, ...] = (
    Row("x", "x", "value", "‖x‖", "the S6 state inside the scan"),
    Row("cx", "cx", "value", "‖C·x‖", "the S6 readout: y without the D⊙u skip"),
    Row("y", "y", "value", "‖y‖", "the S6 output C·x + D⊙u: the readout plus the D⊙u skip"),
    Row("dx", "x", "delta_init", "‖Δx‖", "the change of the state since step 0 (on the probe batch)"),
    Row("dcx", "cx", "delta_init", "‖Δ(C·x)‖", "the change of the readout C·x since step 0"),
    Row("dy", "y", "delta_init", "‖Δy‖", "the change of C·x + D⊙u since step 0, the skip's included"),
    Row("grad_y", "grad_y", "value", "‖∂L/∂y‖", "the loss gradient at the S6 output"),
    Row("grad_x", "grad_x", "value", "‖∂L/∂x‖", "the loss gradient at the state"),
    Row("out", "block_out", "value", "‖out‖", "the block's output (after out_proj)"),
    Row("dout", "block_out", "delta_init", "‖Δout‖", "the change of the block's output since step 0"),
)
"""Rows the coordinate check can show, in display order (the readout C·x before y = C·x + D⊙u)."""
ROW_BY_KEY = {r.key: r for r in ROWS}
DEFAULT_ROWS = ("x", "cx", "dx", "dcx")
"""The default rows: the state and the S6 readout C·x, and their changes. ‖y‖ = ‖C·x + D⊙u‖ is mostly the D⊙u skip
under Mamba's constants, so the readout is shown by default and y, Δy are one click away (they stand in for C·x
in a store without cx probes)."""
FALLBACK_ROWS = {"cx": "y", "dcx": "dy"}


def default_rows(keys: Sequence[str]) -> list[str]:
    """The default rows among the available `keys`: DEFAULT_ROWS, y and Δy where a store has no C·x probes."""
    chosen = [k if k in keys else FALLBACK_ROWS.get(k, k) for k in DEFAULT_ROWS]
    return [k for k in dict.fromkeys(chosen) if k in keys] or list(keys[:4])


def readout_ratio(frame: pl.DataFrame, convention: Convention | str, step: int) -> float | None:
    """The median over runs and layers of ‖y‖ / ‖C·x‖ at `step` (how much of y is the D⊙u skip); None without both."""
    at = frame.filter((pl.col("step") == step) & (pl.col("group") == "") & (pl.col("quantity") == "value")
                      & pl.col("site").is_in(["y", "cx"]))
    if at.is_empty():
        return None
    norms = at.select("run_id", "layer", "site", norm_expr(convention)).pivot("site", index=["run_id", "layer"],
                                                                                 values="norm")
    if not {"y", "cx"} <= set(norms.columns):
        return None
    ratio = norms.select((pl.col("y") / pl.col("cx")).alias("r")).filter(pl.col("r").is_finite())["r"]
    return float(ratio.median()) if len(ratio) else None


def ordered(values: Iterable, order: Sequence = ()) -> list:
    """Distinct values, those in `order` first (in that order), the rest sorted: numbers by value (32 before 256),
    anything else by its text."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    first = [v for v in order if v in distinct]
    rest = [v for v in distinct if v not in order]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in rest)
    return first + sorted(rest, key=None if numeric else str)  # numbers by value: 32 before 256


def in_rows(rows: Sequence[Row]) -> pl.Expr:
    """True for probe rows (or slope rows) of one of `rows`."""
    expr = pl.lit(False)
    for r in rows:
        expr = expr | ((pl.col("site") == r.site) & (pl.col("quantity") == r.quantity))
    return expr


def available_rows(frame: pl.DataFrame) -> list[Row]:
    """The ROWS whose (site, quantity) occur in a probe frame."""
    if frame.is_empty():
        return []
    pairs = set(frame.select("site", "quantity").unique().iter_rows())
    return [r for r in ROWS if (r.site, r.quantity) in pairs]


def fmt_lr(lr: float) -> str:
    """A learning rate as people write it, with its power of two when it is one (2^-7)."""
    if lr > 0 and math.log2(lr).is_integer():
        return f"{lr:g} (2^{int(math.log2(lr))})"
    return f"{lr:g}"


# --- width axes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WidthAxis:
    """Which runs form one width axis: joint (N_u = N_x), N_u at a fixed N_x, or N_x at a fixed N_u."""

    design: str  # runs.analysis.slopes.Design value: joint | n_u | n_x
    fixed: int | None  # the width held fixed (None for joint)
    widths: tuple[int, ...]

    @property
    def key(self) -> str:
        """URL form: joint, n_u@16, n_x@64."""
        return self.design if self.fixed is None else f"{self.design}@{self.fixed}"

    def _words(self, joint: str, n_u: str, n_x: str) -> str:
        """The phrase of this axis's design, `{fixed}` filled in."""
        return {"joint": joint, "n_u": n_u}.get(self.design, n_x).format(fixed=self.fixed)

    @property
    def label(self) -> str:
        n = len(self.widths)
        return self._words(f"joint: N_u = N_x ({n} widths)", f"N_u at N_x = {{fixed}} ({n} widths)",
                           f"N_x at N_u = {{fixed}} ({n} widths)")

    @property
    def scale_title(self) -> str:
        """The x title of a figure whose ticks are the widths themselves, placed at log₂ width."""
        return self._words("width N_u = N_x (log₂ scale)", "N_u at N_x = {fixed} (log₂ scale)",
                           "N_x at N_u = {fixed} (log₂ scale)")

    @property
    def axis_title(self) -> str:
        return self._words("log₂ width (N_u = N_x)", "log₂ N_u (N_x = {fixed})", "log₂ N_x (N_u = {fixed})")

    def select(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows of `frame` (with n_u, n_x) on this axis, with a `width` column."""
        width = pl.col("n_x" if self.design == "n_x" else "n_u")
        return frame.filter(on_axis(self.design, self.fixed)).with_columns(width.alias("width"))


def width_axes(runs: pl.DataFrame) -> list[WidthAxis]:
    """Every width axis with at least two widths among `runs` (joint first, then N_u, then N_x)."""
    if runs.is_empty():
        return []
    pairs = set(runs.select("n_u", "n_x").unique().iter_rows())
    axes = []
    joint = sorted(u for u, x in pairs if u == x)
    if len(joint) >= 2:
        axes.append(WidthAxis("joint", None, tuple(joint)))
    for fixed in sorted({x for _, x in pairs}):
        widths = sorted(u for u, x in pairs if x == fixed)
        if len(widths) >= 2:
            axes.append(WidthAxis("n_u", fixed, tuple(widths)))
    for fixed in sorted({u for u, _ in pairs}):
        widths = sorted(x for u, x in pairs if u == fixed)
        if len(widths) >= 2:
            axes.append(WidthAxis("n_x", fixed, tuple(widths)))
    return axes


DESIGN_LABELS = {"joint": "joint (N_u = N_x)", "n_u": "N_u (N_x fixed)", "n_x": "N_x (N_u fixed)",
                 "2d": "2-D (s_u and s_x)"}
"""The slope fits' width designs (runs.analysis.slopes.Design) as the pages name them."""
MIN_FIT_WIDTHS = 3
"""Widths a slope fit needs along its axis (runs.analysis.slopes.fit.MIN_WIDTHS)."""


def _widths_text(widths: Iterable[int]) -> str:
    return ", ".join(str(w) for w in sorted(widths)) or "none"


def design_problem(runs: pl.DataFrame, design: str) -> str | None:
    """Why the runs' width points (n_u, n_x) cannot support a slope fit along `design`; None when they can."""
    pairs = set(runs.select("n_u", "n_x").unique().iter_rows()) if not runs.is_empty() else set()
    need = MIN_FIT_WIDTHS
    if design == "joint":
        joint = {u for u, x in pairs if u == x}
        return None if len(joint) >= need else (
            f"only {len(joint)} width(s) with N_u = N_x ({_widths_text(joint)}); a joint fit needs {need}")
    if design in ("n_u", "n_x"):
        fixed_of, varied = (1, 0) if design == "n_u" else (0, 1)
        by_fixed: dict[int, set[int]] = {}
        for pair in pairs:
            by_fixed.setdefault(pair[fixed_of], set()).add(pair[varied])
        name, other = ("N_u", "N_x") if design == "n_u" else ("N_x", "N_u")
        best = max(by_fixed.items(), key=lambda kv: (len(kv[1]), -kv[0]), default=None)
        if best is not None and len(best[1]) >= need:
            return None
        most = f"at most {len(best[1])} ({_widths_text(best[1])} at {other} = {best[0]})" if best else "none"
        return f"no {other} holds {need} or more {name} values: {most}"
    if design == "2d":
        n_u, n_x = {u for u, _ in pairs}, {x for _, x in pairs}
        if len(n_u) < need or len(n_x) < need:
            return f"{len(n_u)} N_u and {len(n_x)} N_x value(s); a 2-D fit needs {need} of each"
        if len({x / u for u, x in pairs}) < 2:
            return "every (N_u, N_x) point lies on one line N_x ∝ N_u, so s_u and s_x cannot be told apart"
        return None
    return f"unknown design {design!r}"


Panels = Sequence[str] | pl.Expr
"""How rows map to figure columns: run columns whose values are joined by " · ", or an expression."""


def panel_expr(panel_by: Panels) -> pl.Expr:
    """The figure column a row belongs to: its values of `panel_by` joined by " · " (or the given expression)."""
    if isinstance(panel_by, pl.Expr):
        return panel_by.alias("panel")
    if not panel_by:
        return pl.lit("all").alias("panel")
    return pl.concat_str([pl.col(c).cast(pl.String) for c in panel_by], separator=" · ").alias("panel")


# --- the coordinate check ----------------------------------------------------------------------
POINT_COLUMNS = ["panel", "site", "quantity", "layer", "width", "log2_width", "run_id", "seed", "status",
                 *PARAMETERIZATION_KEYS, "lr", *WIDTH_KEYS, "norm", "log2_norm", "finite"]


def coord_points(frame: pl.DataFrame, *, convention: Convention | str, step: int | Sequence[int], axis: WidthAxis,
                 panel_by: Panels, rows: Sequence[Row]) -> pl.DataFrame:
    """One point per (run, layer, row, step) at `step` (one or several): log2 of the norm in `convention` against
    log2 width. `finite` is False where the norm is zero or not finite (its log has no place on the axis).
    Several steps need a `panel_by` that tells them apart (e.g. pl.format("step {}", pl.col("step")))."""
    steps = [step] if isinstance(step, int) else list(step)
    sel = axis.select(frame.filter(pl.col("step").is_in(steps) & (pl.col("group") == "") & in_rows(rows)))
    norm = norm_expr(convention)
    return (sel.with_columns(panel_expr(panel_by), norm)
            .with_columns(pl.col("width").cast(pl.Float64).log(2).alias("log2_width"),
                          pl.col("norm").log(2).alias("log2_norm"))
            .with_columns((pl.col("log2_norm").is_finite()).alias("finite"))
            .select(POINT_COLUMNS)
            .sort("panel", "site", "quantity", "layer", "width", "seed"))


def seed_bands(points: pl.DataFrame) -> pl.DataFrame:
    """Per (panel, row, layer, width): mean, min and max over seeds of log2‖·‖ of the included points.

    Included: finite points of runs that neither diverged nor failed (the runs the slope fits use).
    """
    keep = points.filter(pl.col("finite") & ~pl.col("status").is_in(FLAGGED_STATUSES))
    return (keep.group_by("panel", "site", "quantity", "layer", "width", "log2_width")
            .agg(pl.col("log2_norm").mean().alias("mean"), pl.col("log2_norm").min().alias("lo"),
                 pl.col("log2_norm").max().alias("hi"), pl.len().alias("n_seeds"))
            .sort("panel", "site", "quantity", "layer", "width"))


FLAG_COLUMNS = ["panel", "width", "log2_width", "run_id", "seed", "status", "last_finite_step", "reason",
                "site", "quantity", "layer"]


def flagged_points(runs: pl.DataFrame, points: pl.DataFrame, *, axis: WidthAxis, panel_by: Panels,
                   step: int) -> pl.DataFrame:
    """What the figure marks instead of leaving out: one row per flagged run or point.

    - a run that diverged or failed (from `runs`, so one with no probe rows at `step` is still shown):
      site/quantity/layer null, marked on every row of its panel;
    - a point of an included run whose norm is zero or not finite at `step` (reason "zero" or "non-finite").
    """
    sel = axis.select(runs).filter(pl.col("status").is_in(FLAGGED_STATUSES))
    bad_runs = sel.with_columns(
        panel_expr(panel_by), pl.col("width").cast(pl.Float64).log(2).alias("log2_width"),
        pl.format("{} (last finite step {})", pl.col("status"), pl.col("last_finite_step")).alias("reason"),
        pl.lit(None, pl.String).alias("site"), pl.lit(None, pl.String).alias("quantity"),
        pl.lit(None, pl.Int32).alias("layer"))
    bad_points = points.filter(~pl.col("finite") & ~pl.col("status").is_in(FLAGGED_STATUSES)).with_columns(
        pl.lit(None, pl.Int64).alias("last_finite_step"),
        pl.when(pl.col("norm") == 0).then(pl.lit(f"norm = 0 at step {step}"))
        .otherwise(pl.lit(f"non-finite norm at step {step}")).alias("reason"))
    schema = {"panel": pl.String, "width": pl.Int64, "log2_width": pl.Float64, "run_id": pl.String,
              "seed": pl.Int64, "status": pl.String, "last_finite_step": pl.Int64, "reason": pl.String,
              "site": pl.String, "quantity": pl.String, "layer": pl.Int32}
    parts = [f.select(FLAG_COLUMNS).cast(schema) for f in (bad_runs, bad_points) if not f.is_empty()]
    return pl.concat(parts) if parts else pl.DataFrame(schema=schema)


SLOPE_COLUMNS = ["panel", "site", "quantity", "layer", "estimate", "ci_low", "ci_high", "intercept", "predicted",
                 "log_x", "verdict", "agreement", "status", "n_points", "n_seeds", "n_widths", "n_diverged"]


def panel_slopes(slopes: pl.DataFrame, panel_by: Panels) -> pl.DataFrame:
    """The totals' rows of a runs.analysis.slopes frame keyed like the figure (panel, site, quantity, layer)."""
    if slopes.is_empty():
        return pl.DataFrame(schema={c: pl.String for c in SLOPE_COLUMNS})
    return slopes.filter(pl.col("group") == "").with_columns(panel_expr(panel_by)).select(SLOPE_COLUMNS)


ROW_TITLES = {(r.site, r.quantity): r.title for r in ROWS}
"""(site, quantity) → the row's title (‖Δx‖ …)."""


def figure_slopes(slopes: pl.DataFrame, rows: Sequence[Row], panels: Sequence[str]) -> pl.DataFrame:
    """The fitted slopes of exactly what a figure plots (its rows and panels), for reading beside it.

    Quantities by their titles (‖Δx‖), the predicted exponent as people write it (+½, −1·log) or "no
    prediction", the verdict in words that carry the agreement; rows in the figure's order.
    """
    schema = {"panel": pl.String, "quantity": pl.String, "layer": pl.Int32, "estimate": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "predicted": pl.String, "verdict": pl.String,
              "n_seeds": pl.Int64, "n_widths": pl.Int64, "status": pl.String}
    if slopes.is_empty():
        return pl.DataFrame(schema=schema)
    shown = slopes.filter(in_rows(rows) & pl.col("panel").is_in(list(panels)))
    row_rank = {(r.site, r.quantity): i for i, r in enumerate(rows)}
    panel_rank = {p: i for i, p in enumerate(panels)}
    records = []
    for r in shown.iter_rows(named=True):
        records.append({"panel": r["panel"], "quantity": ROW_TITLES[(r["site"], r["quantity"])], "layer": r["layer"],
                        "estimate": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                        "predicted": "no prediction" if r["predicted"] is None else
                        exponent_text(r["predicted"], r.get("log_x")),
                        "verdict": record_words(r),
                        "n_seeds": r["n_seeds"], "n_widths": r["n_widths"], "status": r["status"].replace("_", " "),
                        "_rank": (panel_rank[r["panel"]], row_rank[(r["site"], r["quantity"])], r["layer"])})
    records.sort(key=lambda rec: rec.pop("_rank"))
    return pl.DataFrame(records, schema=schema)


def slope_comparison(fits: pl.DataFrame, labels: Sequence[str], rows: Sequence[Row]) -> pl.DataFrame:
    """Measured exponents of several selections side by side, and each one's difference from the first.

    `fits` is a panel_slopes frame whose `panel` names the selection of each row (one of `labels`); the result
    has a row per (quantity, layer): the difference "B − A" of each later selection from the first, then s, its
    CI and the verdict per selection.
    """
    keys = ["site", "quantity", "layer"]
    if fits.is_empty():
        return pl.DataFrame()
    shown = fits.filter(in_rows(rows) & pl.col("panel").is_in(list(labels)))
    shown = shown.with_columns(pl.Series("words", [record_words(r) for r in shown.iter_rows(named=True)], pl.String))
    joined = None
    for label in labels:
        side = shown.filter(pl.col("panel") == label).select(
            *keys, pl.col("estimate").alias(f"s [{label}]"), pl.col("ci_low").alias(f"CI low [{label}]"),
            pl.col("ci_high").alias(f"CI high [{label}]"), pl.col("words").alias(f"verdict [{label}]"))
        joined = side if joined is None else joined.join(side, on=keys, how="full", coalesce=True, nulls_equal=True)
    if joined is None or joined.is_empty():
        return pl.DataFrame()
    first = labels[0]
    diffs = [(pl.col(f"s [{b}]") - pl.col(f"s [{first}]")).alias(f"{b} − {first}") for b in labels[1:]]
    rank = {(r.site, r.quantity): i for i, r in enumerate(rows)}
    order = pl.struct("site", "quantity").map_elements(lambda s: rank.get((s["site"], s["quantity"]), 99),
                                                       return_dtype=pl.Int64)
    titled = pl.struct("site", "quantity").map_elements(lambda s: ROW_TITLES.get((s["site"], s["quantity"]),
                                                                                 f"{s['site']} {s['quantity']}"),
                                                        return_dtype=pl.String)
    out = joined.with_columns(*diffs, order.alias("_rank"), titled.alias("quantity_title"))
    return (out.sort("_rank", "layer").drop("_rank", "site", "quantity").rename({"quantity_title": "quantity"})
            .select("quantity", "layer", *(d.meta.output_name() for d in diffs),
                    *(c for c in out.columns if c.startswith(("s [", "CI ", "verdict [")))))


# --- norms against the step -------------------------------------------------------------------
STEP_CURVE_COLUMNS = ["width", "step", "norm", "lo", "hi", "n_seeds"]


def step_curves(frame: pl.DataFrame, *, convention: Convention | str, axis: WidthAxis, row: Row,
                layer: int) -> pl.DataFrame:
    """Per (width, step): the geometric mean over seeds of one row's norm at one layer (the mean of log2‖·‖, as the
    coordinate check's line), its min and max over seeds, and the number of seeds.

    Included: runs that neither diverged nor failed, and norms that are finite and positive (a log axis has no
    place for the zero Δ at step 0)."""
    sel = axis.select(frame.filter((pl.col("site") == row.site) & (pl.col("quantity") == row.quantity)
                                   & (pl.col("group") == "") & (pl.col("layer") == layer)
                                   & ~pl.col("status").is_in(FLAGGED_STATUSES)))
    norms = sel.with_columns(norm_expr(convention)).filter(pl.col("norm").is_finite() & (pl.col("norm") > 0))
    return (norms.group_by("width", "step")
            .agg((2.0 ** pl.col("norm").log(2).mean()).alias("norm"), pl.col("norm").min().alias("lo"),
                 pl.col("norm").max().alias("hi"), pl.len().alias("n_seeds"))
            .sort("width", "step").select(STEP_CURVE_COLUMNS))


# --- per-run curves ----------------------------------------------------------------------------
def run_curves(frame: pl.DataFrame, *, convention: Convention | str, rows: Sequence[Row]) -> pl.DataFrame:
    """One run's probe rows as (row key, layer, step, norm): the curves of its detail view."""
    parts = []
    for r in rows:
        part = frame.filter((pl.col("site") == r.site) & (pl.col("quantity") == r.quantity)
                            & (pl.col("group") == ""))
        parts.append(part.select(pl.lit(r.key).alias("row"), "layer", "step", norm_expr(convention))
                     .filter(pl.col("norm").is_finite() & (pl.col("norm") > 0)))  # log axis: Δ = 0 at step 0
    schema = {"row": pl.String, "layer": pl.Int32, "step": pl.Int64, "norm": pl.Float64}
    return pl.concat([p.cast(schema) for p in parts]).sort("row", "layer", "step") if parts else (
        pl.DataFrame(schema=schema))


# --- learning-rate transfer --------------------------------------------------------------------
def lr_grid(final: pl.DataFrame) -> pl.DataFrame:
    """The (preset, discretization, optimizer) groups of runs.analysis.transfer.final_losses with ≥ 2 learning rates."""
    return (final.group_by(PARAMETERIZATION_KEYS)
            .agg(pl.col("lr").n_unique().alias("n_lrs"), pl.len().alias("n_runs"))
            .filter(pl.col("n_lrs") >= 2).sort(PARAMETERIZATION_KEYS))


def width_column(final: pl.DataFrame) -> str:
    """The width that varies in a transfer sweep (the rule of runs.analysis.transfer)."""
    return "n_u" if final["n_u"].n_unique() > 1 else "n_x"


def transfer_curves(final: pl.DataFrame) -> pl.DataFrame:
    """Per (width, lr): the seed-mean final loss of finished runs, with how many seeds diverged.

    A learning rate where any seed diverged has a null mean (runs.analysis.transfer treats it as diverged).
    """
    width = width_column(final)
    finite = pl.col("loss").is_finite()
    return (final.with_columns(pl.col(width).alias("width"))
            .group_by("width", "lr")
            .agg(pl.when(finite.all()).then(pl.col("loss").mean()).alias("loss"),
                 (~finite).sum().alias("n_diverged"), pl.len().alias("n_seeds"),
                 pl.col("run_id").str.join(", ").alias("run_ids"))
            .with_columns(pl.col("lr").log(2).alias("log2_lr"))
            .sort("width", "lr"))
