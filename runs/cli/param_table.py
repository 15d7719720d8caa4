"""Render a preset's plan (ssm.apply.plan) as a table for `ssmscope param show`."""

from __future__ import annotations

from rich.table import Table

from ssmscope.ssm.apply import ParamPlan
from ssmscope.ssm.roles import InitKind


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def _init_cells(r: ParamPlan) -> tuple[str, str, str, str]:
    """(distribution, std/value, base rule, width scaling) of one row."""
    if r.init_kind == InitKind.TIED:
        return "tied", "—", r.init_rule, "(embedding's)"
    if r.init_kind == InitKind.STRUCTURAL:
        return "structural", "—", r.init_rule, "—"
    return str(r.init_kind), _fmt(r.init_scale), r.init_rule, "—" if r.init_exponents is None else str(r.init_exponents)


def _decay_cell(r: ParamPlan) -> str:
    """Whether the run's weight decay applies: on, off (the preset's `decay = false`) or the embedding's."""
    return "(embedding's)" if r.decay is None else "on" if r.decay else "off"


def plan_table(rows: list[ParamPlan], title: str, collapse_layers: bool = True) -> Table:
    """One row per parameter (per role and position when layers are collapsed).

    Two columns appear only when the preset uses them, so that the tables of presets without them read as
    before: `wd` (weight decay on/off) when some role has `decay = false`, `mult base` (the constant part of
    `mult`) when some role has a `mult_base`."""
    show_wd = any(r.decay is False for r in rows)
    show_base = any(r.mult_base != 1.0 for r in rows)
    table = Table(title=title, header_style="bold")
    cols = ["parameter", "role", "shape", "dist", "init std/value", "base rule", "init ∝", "lr", "lr ∝", "mult"]
    cols += ["mult base"] * show_base + ["wd"] * show_wd
    for col in cols:
        table.add_column(col, justify="right" if col in ("init std/value", "lr", "mult", "mult base") else "left")
    seen: set[str] = set()
    for r in rows:
        name = r.name
        if collapse_layers and r.layer is not None:
            name = "layers.*." + r.name.split(".", 2)[2]
            if name in seen:
                continue
            seen.add(name)
        extra = ([] if not show_base else ["—" if r.multiplier is None else f"{r.mult_base:.4g}"]) + (
            [] if not show_wd else ["—" if r.role is None else _decay_cell(r)])
        if r.role is None:
            table.add_row(name, "[red]UNCOVERED[/red]", str(list(r.shape)), "—", "—", "—", "—", "—",
                          "—", "—", *extra, style="red")
            continue
        dist, scale, rule, init_exp = _init_cells(r)
        table.add_row(
            name, str(r.role), str(list(r.shape)), dist, scale, rule, init_exp,
            "(embedding's)" if r.init_kind == InitKind.TIED else _fmt(r.lr),
            "—" if r.lr_exponents is None else str(r.lr_exponents),
            "—" if r.multiplier is None else f"{r.multiplier:.4g}", *extra,
        )
    return table
