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


def plan_table(rows: list[ParamPlan], title: str, collapse_layers: bool = True) -> Table:
    """One row per parameter (per role and position when layers are collapsed)."""
    table = Table(title=title, header_style="bold")
    for col in ("parameter", "role", "shape", "dist", "init std/value", "base rule", "init ∝", "lr",
                "lr ∝", "mult"):
        table.add_column(col, justify="right" if col in ("init std/value", "lr", "mult") else "left")
    seen: set[str] = set()
    for r in rows:
        name = r.name
        if collapse_layers and r.layer is not None:
            name = "layers.*." + r.name.split(".", 2)[2]
            if name in seen:
                continue
            seen.add(name)
        if r.role is None:
            table.add_row(name, "[red]UNCOVERED[/red]", str(list(r.shape)), "—", "—", "—", "—", "—",
                          "—", "—", style="red")
            continue
        dist, scale, rule, init_exp = _init_cells(r)
        table.add_row(
            name, str(r.role), str(list(r.shape)), dist, scale, rule, init_exp,
            "(embedding's)" if r.init_kind == InitKind.TIED else _fmt(r.lr),
            "—" if r.lr_exponents is None else str(r.lr_exponents),
            "—" if r.multiplier is None else f"{r.multiplier:.4g}",
        )
    return table
