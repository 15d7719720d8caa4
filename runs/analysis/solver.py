"""The exponent solver: the width exponents a finite-width sweep asks for (docs/solver.md).

From a sweep of a preset with per-group update probes (runs.analysis.groups), one iteration
  1. fits the objective's targets (runs.analysis.objective) per layer and discretisation; if every one is
     within ±tolerance the preset is done (a preset that is already flat is left unchanged);
  2. proposes knob shifts:
     - learning rates: each probed group g's contribution ‖Δq_g‖ is first order in its learning rate
       (SGD: Δθ = −η∇; Adam: Δθ ≈ −η·sign-like, Θ(η) per entry), so shifting the group's lr exponent by δ
       shifts the slope of its contribution by δ. δ_g = −s̄_g, s̄_g the energy-share-weighted mean over the
       update sites of its contribution's slope (layer mean; a group is steered by the sites it moves:
       weights ‖Δq_g‖²/Σ_h‖Δq_h‖² at the largest width);
     - init: forward sites at step 0 are linear in the read-in W_B (x ∝ c_B) and the read-out W_C
       (C·x ∝ c_C·c_B), so the knob's init exponent moves by −(slope at step 0 + the shifts of the knobs
       it comes after);
     a knob moves only when the slope it flattens exceeds the tolerance and its 95 % CI excludes 0, by
     its raw shift rounded to the grid;
  3. the caller re-sweeps with the shifted preset, until every target is flat, the iteration limit is
     reached, no knob moves (stalled) or a preset repeats (cycling).

The shift of a joint-width slope (N_u = N_x) cannot say which axis to move: it goes to N_x for the roles
with a state axis (W_B, W_C, A_log; the finite-width crossover is in the state modes, docs/theory.md §7)
and to N_u for the others. A 2-D sweep fits and shifts N_u and N_x separately.
Pure polars/numpy: sweeping is the caller's (`measure`), see runs/cli/param_fit.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import polars as pl

from ssmscope.runs.analysis import preset_toml
from ssmscope.runs.analysis.groups import group_slopes, require_group_probes
from ssmscope.runs.analysis.objective import Objective
from ssmscope.runs.analysis.regime import attach_regime
from ssmscope.runs.analysis.slopes.fit import fit_slopes
from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.runs.analysis.vocabulary import FitStatus
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import Preset

STATE_AXIS_ROLES = frozenset({"x_proj_B", "x_proj_C", "A_log", "in_proj_B", "in_proj_C"})
"""Roles with an N_x axis (S6: x_proj_B, x_proj_C, A_log; Mamba-2: in_proj_B, in_proj_C, whose fan-out is
ngroups·d_state — its A_log is one scalar per head, but the name is shared with S6 and so goes with it): a
joint-width shift of these goes to their N_x exponent, of the others to N_u."""
TARGET_COLUMNS = ["discretization", "target", "site", "quantity", "step", "layer", "convention", "term",
                  "estimate", "ci_low", "ci_high", "status", "regime_ratio", "regime", "flat"]
"""Columns of `target_slopes`."""


@dataclass(frozen=True)
class Shift:
    """One knob's proposed change in one discretisation (and one width term)."""

    knob: str  # "lr W_B", "init x_proj_C"
    roles: tuple[str, ...]
    kind: str  # "init", "lr.adam", "lr.sgd"
    discretization: str
    term: str  # width (joint), n_u or n_x
    slope: float | None  # the slope the knob flattens; None when it could not be fitted
    ci_low: float | None
    ci_high: float | None
    raw: float | None  # −slope (init knobs: less the earlier knobs' shifts)
    shift: Fraction  # raw rounded to the grid; 0 when |slope| ≤ tolerance or not fitted
    source: str  # what the slope is, in words

    def axis(self, role: str) -> str:
        """The exponent axis this shift moves for `role` (module docstring)."""
        if self.term != "width":
            return self.term
        return "n_x" if role in STATE_AXIS_ROLES else "n_u"


@dataclass
class Iteration:
    """One measured preset: its targets, and the shifts proposed from it (empty when it stopped there)."""

    index: int
    raw: dict[str, Any]
    targets: pl.DataFrame
    shifts: list[Shift] = field(default_factory=list)

    @property
    def worst(self) -> float | None:
        """max |slope| over the fitted targets (None if none was fitted)."""
        ok = self.targets.filter(pl.col("status") == FitStatus.OK)
        return None if ok.is_empty() else float(ok.get_column("estimate").abs().max())

    @property
    def badness(self) -> tuple[int, float]:
        """How far from the objective: (target cells not flat, max |slope|); the best iteration is the least."""
        return int((~self.targets.get_column("flat")).sum()), float("inf") if self.worst is None else self.worst

    @property
    def all_flat(self) -> bool:
        return self.targets.height > 0 and bool(self.targets.get_column("flat").all())


@dataclass
class SolveResult:
    """Every iteration, whether the last met the objective, why the solver stopped, and the preset chosen."""

    iterations: list[Iteration]
    converged: bool
    reason: str
    chosen: int  # index of the iteration whose preset is the result

    @property
    def raw(self) -> dict[str, Any]:
        return self.iterations[self.chosen].raw


def round_to_grid(value: float, grid: Fraction) -> Fraction:
    """The multiple of `grid` nearest to `value` (ties away from zero)."""
    steps = abs(value) / float(grid)
    n = int(steps + 0.5)
    return Fraction(n if value >= 0 else -n) * grid


def target_slopes(frame: pl.DataFrame, objective: Objective, *, design: str = "joint", n_boot: int = DEFAULT_N_BOOT,
                  rng_seed: int = 0) -> pl.DataFrame:
    """Every target of the objective fitted per layer and discretisation (TARGET_COLUMNS).

    `flat`: the fit is ok and |estimate| ≤ tolerance. Regime columns as runs.analysis.regime.
    """
    parts = []
    for disc in sorted(frame.get_column("discretization").unique().to_list()):
        in_disc = frame.filter((pl.col("discretization") == disc) & (pl.col("group").fill_null("") == ""))
        for target in objective.targets:
            subset = in_disc.filter((pl.col("site") == target.site) & (pl.col("quantity") == target.quantity))
            if subset.is_empty():
                continue
            conv = objective.convention(target.site, disc)
            fits = fit_slopes(subset, convention=conv, design=design, layers="each", step=target.step,
                              n_boot=n_boot, rng_seed=rng_seed)
            fits = attach_regime(fits, in_disc)
            parts.append(fits.with_columns(pl.lit(target.label()).alias("target")))
    if not parts:
        raise ConfigError("none of the objective's targets has probe rows in the sweep (sites "
                          f"{', '.join(sorted({t.site for t in objective.targets}))}); check the objective")
    out = pl.concat(parts, how="diagonal_relaxed")
    flat = (pl.col("status") == FitStatus.OK) & (pl.col("estimate").abs() <= objective.tolerance)
    return out.with_columns(flat.fill_null(False).alias("flat")).select(TARGET_COLUMNS)


def _init_shifts(frame: pl.DataFrame, objective: Objective, disc: str, design: str, n_boot: int,
                 rng_seed: int) -> list[Shift]:
    """The init knobs' shifts in one discretisation, from the forward sites at step 0 (layer mean)."""
    shifts: list[Shift] = []
    moved: dict[tuple[str, str], float] = {}  # (role, term) → the grid shift already proposed
    for knob in objective.init_knobs:
        conv = objective.convention(knob.site, disc)
        subset = frame.filter((pl.col("discretization") == disc) & (pl.col("site") == knob.site)
                              & (pl.col("quantity") == "value") & (pl.col("group").fill_null("") == ""))
        fits = fit_slopes(subset, convention=conv, design=design, layers="mean", step=0, n_boot=n_boot,
                          rng_seed=rng_seed) if not subset.is_empty() else pl.DataFrame()
        source = f"‖{knob.site}‖ ({conv}) at step 0, mean over layers"
        for row in fits.iter_rows(named=True) if not fits.is_empty() else []:
            term = row["term"]
            earlier = sum(moved.get((a, term), 0.0) for a in knob.after)
            slope = row["estimate"] if row["status"] == FitStatus.OK else None
            raw = None if slope is None else -(slope + earlier)
            residual = None if slope is None else slope + earlier
            lo = None if row["ci_high"] is None else -(row["ci_high"] + earlier)
            hi = None if row["ci_low"] is None else -(row["ci_low"] + earlier)
            move = _moves(residual, None if hi is None else -hi, None if lo is None else -lo, objective)
            shift = round_to_grid(raw, objective.grid) if move else Fraction(0)
            moved[(knob.role, term)] = float(shift)
            shifts.append(Shift(f"init {knob.role}", (knob.role,), "init", disc, term, slope, lo, hi, raw, shift,
                                source + (f", after {', '.join(knob.after)}" if knob.after else "")))
    return shifts


def _lr_shifts(frame: pl.DataFrame, objective: Objective, disc: str, design: str,
               group_roles: Mapping[str, tuple[str, ...]], family: str, n_boot: int, rng_seed: int) -> list[Shift]:
    """Each group's learning-rate shift in one discretisation (module docstring).

    Per update site, the group's contribution is fitted on the mean over layers of log2‖Δq_g‖ (its seed
    bootstrap CI is exact; per-layer fits of 3 seeds are too noisy to steer by); the sites are weighted by
    the group's energy share there (mean over layers, at the largest width). The CI of the weighted mean
    is the weighted mean of the sites' CI ends (the bound for fully correlated sites: conservative).
    """
    in_disc = frame.filter(pl.col("discretization") == disc)
    parts = []
    for site in objective.update_sites:
        conv = objective.convention(site, disc)
        fits = group_slopes(in_disc, sites=(site,), convention=conv, design=design, layers="mean",
                            step=objective.update_step, n_boot=n_boot, rng_seed=rng_seed)
        parts.append(fits.filter(pl.col("group") != ""))
    fits = pl.concat(parts, how="diagonal_relaxed")
    ok = (pl.col("status") == FitStatus.OK) & pl.col("energy_share").is_not_null()
    weight = pl.when(ok).then(pl.col("energy_share")).otherwise(0.0)
    summary = (fits.with_columns(weight.alias("_w"))
               .group_by("group", "term", maintain_order=True)
               .agg((pl.col("_w") * pl.col("estimate").fill_null(0.0)).sum().alias("_ws"),
                    (pl.col("_w") * pl.col("ci_low").fill_null(0.0)).sum().alias("_wl"),
                    (pl.col("_w") * pl.col("ci_high").fill_null(0.0)).sum().alias("_wh"),
                    pl.col("_w").sum().alias("_w")))
    shifts = []
    where = f"Δ{'/Δ'.join(objective.update_sites)} @ step {objective.update_step}"
    for row in summary.iter_rows(named=True):
        group = row["group"]
        roles = tuple(group_roles.get(group, ()))
        if not roles:
            continue
        slope = lo = hi = raw = None
        if row["_w"] > 0:
            slope, lo, hi = row["_ws"] / row["_w"], row["_wl"] / row["_w"], row["_wh"] / row["_w"]
            raw = -slope
        shift = round_to_grid(raw, objective.grid) if _moves(slope, lo, hi, objective) else Fraction(0)
        shifts.append(Shift(f"lr {group}", roles, f"lr.{family}", disc, row["term"], slope,
                            None if hi is None else -hi, None if lo is None else -lo, raw, shift,
                            f"{group}'s contribution to {where}, layer mean, energy-share weighted over sites"))
    return shifts


def _moves(slope: float | None, ci_low: float | None, ci_high: float | None, objective: Objective) -> bool:
    """A knob moves when the slope it flattens exceeds the tolerance and its CI excludes 0 (no chasing noise)."""
    if slope is None or abs(slope) <= objective.tolerance:
        return False
    if ci_low is None or ci_high is None:
        return True
    return not ci_low <= 0.0 <= ci_high


def propose(frame: pl.DataFrame, objective: Objective, *, group_roles: Mapping[str, tuple[str, ...]], family: str,
            design: str = "joint", n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0) -> list[Shift]:
    """Every knob's shift, per discretisation (module docstring). Needs per-group probes in `frame`."""
    require_group_probes(frame)
    shifts = []
    for disc in sorted(frame.get_column("discretization").unique().to_list()):
        shifts += _init_shifts(frame, objective, disc, design, n_boot, rng_seed)
        shifts += _lr_shifts(frame, objective, disc, design, group_roles, family, n_boot, rng_seed)
    return shifts


def shifted_exponents(raw: Mapping[str, Any], shifts: list[Shift]) -> dict[tuple[str, str, str], preset_toml.Pair]:
    """(role, disc, kind) → new (n_u, n_x) after the non-zero shifts (from the exponents the preset layer
    reads in `raw`)."""
    new: dict[tuple[str, str, str], preset_toml.Pair] = {}
    current: Preset | None = None  # read once, when a knob moves
    for s in shifts:
        if s.shift == 0:
            continue
        current = current or preset_toml.effective(raw)
        for role in s.roles:
            key = (role, s.discretization, s.kind)
            n_u, n_x = new.get(key) or preset_toml.exponents(current, role, s.discretization, s.kind)
            if s.axis(role) == "n_u":
                n_u += s.shift
            else:
                n_x += s.shift
            new[key] = (n_u, n_x)
    return new


def solve(base: Mapping[str, Any], measure: Callable[[dict[str, Any], int], pl.DataFrame], objective: Objective, *,
          group_roles: Mapping[str, tuple[str, ...]], family: str, design: str = "joint",
          n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0,
          on_iteration: Callable[[Iteration], None] | None = None) -> SolveResult:
    """Measure, shift, re-measure (module docstring). `measure(raw, k)` sweeps preset table `raw` and
    returns its probe frame (with group probes); `on_iteration` sees each iteration once its shifts are known.
    """
    raw = dict(base)
    seen: list[dict[str, Any]] = []
    iterations: list[Iteration] = []
    converged, reason = False, ""
    for k in range(objective.max_iterations + 1):
        frame = measure(raw, k)
        it = Iteration(k, raw, target_slopes(frame, objective, design=design, n_boot=n_boot, rng_seed=rng_seed))
        iterations.append(it)
        seen.append(raw)
        if it.all_flat:
            converged, reason = True, f"every targeted slope is within ±{objective.tolerance:g}"
        elif k == objective.max_iterations:
            reason = f"iteration limit ({objective.max_iterations} re-sweeps) reached"
        else:
            it.shifts = propose(frame, objective, group_roles=group_roles, family=family, design=design,
                                n_boot=n_boot, rng_seed=rng_seed)
            new = shifted_exponents(raw, it.shifts)
            if not new:
                reason = (f"stalled: some targets are not flat, but no knob's slope is beyond ±{objective.tolerance:g} "
                          f"with a 95 % CI that excludes 0, so none moves (grid {objective.grid})")
            else:
                raw = preset_toml.with_exponents(raw, new)
                if raw in seen:
                    reason = f"cycling: the shifts lead back to the preset of iteration {seen.index(raw)}"
        if on_iteration is not None:
            on_iteration(it)
        if reason:
            break
    chosen = len(iterations) - 1 if converged else min(range(len(iterations)), key=lambda i: iterations[i].badness)
    return SolveResult(iterations, converged, reason, chosen)


def shift_table(shifts: list[Shift]) -> pl.DataFrame:
    """The shifts as a frame (for printing and the dashboard)."""
    rows = [dict(knob=s.knob, discretization=s.discretization, kind=s.kind, term=s.term, slope=s.slope,
                 raw_shift=s.raw, ci_low=s.ci_low, ci_high=s.ci_high, shift=signed(s.shift),
                 axes=", ".join(f"{r}:{s.axis(r)}" for r in s.roles)) for s in shifts]
    schema = {"knob": pl.String, "discretization": pl.String, "kind": pl.String, "term": pl.String,
              "slope": pl.Float64, "raw_shift": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
              "shift": pl.String, "axes": pl.String}
    return pl.DataFrame(rows, schema=schema)


def before_after(result: SolveResult) -> pl.DataFrame:
    """Per target cell: the slope of iteration 0 and of the chosen preset, and whether each is flat."""
    keys = ["discretization", "target", "layer", "convention", "term"]
    first = result.iterations[0].targets.select(*keys, pl.col("estimate").alias("before"),
                                                 pl.col("flat").alias("flat_before"))
    last = result.iterations[result.chosen].targets.select(
        *keys, pl.col("estimate").alias("after"), pl.col("ci_low"), pl.col("ci_high"), pl.col("regime"),
        pl.col("flat").alias("flat_after"))
    return first.join(last, on=keys, how="full", coalesce=True, nulls_equal=True, maintain_order="left")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:+.3f}"


def signed(value: Fraction) -> str:
    """A grid shift as text: +1/4, -1/2, 0."""
    return "0" if value == 0 else f"{'+' if value > 0 else '-'}{abs(value)}"


def preset_notes(result: SolveResult) -> dict[str, list[str]]:
    """Comment lines per preset table: every applied shift with its raw fit and CI, by iteration."""
    notes: dict[str, list[str]] = {}
    for it in result.iterations[:result.chosen]:
        for s in it.shifts:
            if s.shift == 0:
                continue
            for role in s.roles:
                notes.setdefault(f"roles.{role}", []).append(
                    f"iteration {it.index}, {s.discretization}: {s.kind} {s.axis(role)} {signed(s.shift)} "
                    f"(raw {_fmt(s.raw)}, 95% CI [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]; flattens {s.source})")
    return notes
