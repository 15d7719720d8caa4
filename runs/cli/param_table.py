"""Render a preset's plan (ssm.presets.plan) as a table for `ssmscope param show`."""

from __future__ import annotations

from rich.table import Table

from ssmscope.ssm.presets import ParamPlan


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def plan_table(rows: list[ParamPlan], title: str, collapse_layers: bool = True) -> Table:
    """One row per parameter (per role and position when layers are collapsed)."""
    table = Table(title=title, header_style="bold")
    for col in ("parameter", "role", "shape", "init", "init std/value", "init ∝", "lr",
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
            table.add_row(name, "[red]UNCOVERED[/red]", str(list(r.shape)), "—", "—", "—", "—",
                          "—", "—", style="red")
            continue
        table.add_row(
            name, str(r.role), str(list(r.shape)), str(r.init_kind), _fmt(r.init_scale),
            str(r.init_exponents) if r.init_scale is not None else "structural",
            _fmt(r.lr), str(r.lr_exponents),
            "—" if r.multiplier is None else f"{r.multiplier:.4g}",
        )
    return table
