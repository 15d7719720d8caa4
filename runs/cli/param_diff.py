"""`ssmscope param diff A B`: two presets side by side, role by role, their differences marked.

Reads presets only (ssm.presets: no torch, no model): per role the init, learning-rate (one optimizer family) and
multiplier width exponents, the weight-decay switch and the constant multiplier, plus the head (init base, base width,
readout, a tied readout's multiplier). Rows that differ carry a marker (and colour on a terminal); `--only-diff` keeps
only them. Two presets of different model families have no common roles: one line, exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from rich.table import Table

from ssmscope.runs.cli.console import console, fail, note
from ssmscope.ssm.config import FAMILY_OF_OPTIMIZER, Discretization, Optimizer, OptimizerFamily
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import Preset, load_preset, readout_mult_exponents
from ssmscope.ssm.roles import MULTIPLIER_ROLES, Family, Role

MARK = "≠"
"""The marker column's text on a row whose two sides differ."""
SSD_DISCRETIZATION = Discretization.EULER
"""Mamba-2's (SSD's) discretisation, whatever --discretization says (ssm.mamba2.Mamba2Config.discretization)."""


@dataclass(frozen=True)
class DiffRow:
    """One compared item: the role (or `preset` for the head), what is compared, each side as text."""

    role: str
    what: str
    a: str
    b: str

    @property
    def differs(self) -> bool:
        return self.a != self.b


def _role_rows(role: Role, a: Preset, b: Preset, family: OptimizerFamily, disc: Discretization) -> list[DiffRow]:
    sa, sb = a.scaling(role, disc), b.scaling(role, disc)
    items = [("init ∝", str(sa.init), str(sb.init)), (f"lr ∝ ({family})", str(sa.lr[family]), str(sb.lr[family]))]
    if role in MULTIPLIER_ROLES:
        items += [("mult ∝", str(sa.mult), str(sb.mult)), ("mult base", f"{sa.mult_base:g}", f"{sb.mult_base:g}")]
    items.append(("weight decay", "on" if sa.decay else "off", "on" if sb.decay else "off"))
    return [DiffRow(role.value, what, x, y) for what, x, y in items]


def diff_rows(a: Preset, b: Preset, optimizer: Optimizer | str = Optimizer.ADAM,
              disc: Discretization | str = Discretization.ZOH) -> list[DiffRow]:
    """Every compared item of two presets of one family, the head first, then the roles in `param show`'s order.

    `optimizer` picks the learning-rate exponents (its family's); `disc` the discretisation whose rules are compared
    (a Mamba-2 preset is always compared under SSD's). ConfigError when the families differ."""
    if a.family != b.family:
        raise ConfigError(f"presets {a.name} ({a.family}) and {b.name} ({b.family}) are for different model "
                          f"families; allowed: two {a.family} presets or two {b.family} presets")
    family = FAMILY_OF_OPTIMIZER[Optimizer(optimizer).value]
    disc = SSD_DISCRETIZATION if a.family == Family.MAMBA2 else Discretization(disc)
    head = [DiffRow("preset", "init base", a.init_base.name, b.init_base.name),
            DiffRow("preset", "base width (N_u0, N_x0)", f"({a.base_n_u}, {a.base_n_x})",
                    f"({b.base_n_u}, {b.base_n_x})"),
            DiffRow("preset", "readout", a.readout.value, b.readout.value),
            DiffRow("preset", "tied readout mult ∝", str(readout_mult_exponents(a, disc)),
                    str(readout_mult_exponents(b, disc)))]
    return head + [row for role in a.roles for row in _role_rows(role, a, b, OptimizerFamily(family), disc)]


def diff_table(rows: list[DiffRow], a: str, b: str, title: str) -> Table:
    """The rows as a table: marker, role, what, A, B; differing rows marked and coloured (on a terminal)."""
    table = Table(title=title, header_style="bold")
    for col in ("", "role", "what", a, b):
        table.add_column(col)
    for r in rows:
        table.add_row(MARK if r.differs else "", r.role, r.what, r.a, r.b,
                      style="bold yellow" if r.differs else None)
    return table


def param_diff(
    a: Annotated[str, typer.Argument(help="a preset (built-in name or .toml file)")],
    b: Annotated[str, typer.Argument(help="the preset to compare it with (the same model family)")],
    optimizer: Annotated[Optimizer, typer.Option(help="the optimizer whose lr exponents are compared (its family)")] = (
        Optimizer.ADAM),
    discretization: Annotated[Discretization, typer.Option(
        help="the discretisation whose rules are compared (Mamba-2 presets: always SSD's, euler)")] = (
        Discretization.ZOH),
    only_diff: Annotated[bool, typer.Option("--only-diff", help="show only the rows that differ")] = False,
) -> None:
    """Two presets side by side, role by role: init, lr and multiplier exponents in N_u and N_x, constant multiplier,
    weight decay, init base and readout; differing rows marked ≠."""
    try:
        pa, pb = load_preset(a), load_preset(b)
        rows = diff_rows(pa, pb, optimizer, discretization)
    except ConfigError as exc:
        fail(str(exc))
    shown = [r for r in rows if r.differs] if only_diff else rows
    disc = SSD_DISCRETIZATION if pa.family == Family.MAMBA2 else discretization
    title = f"{pa.name} vs {pb.name} — family {pa.family}, {disc}, {optimizer} lr exponents"
    if shown:
        console.print(diff_table(shown, pa.name, pb.name, title))
    n = sum(r.differs for r in rows)
    roles = sorted({r.role for r in rows if r.differs}, key=[r.role for r in rows].index)
    note(f"{n} of {len(rows)} rows differ" + (f" ({', '.join(roles)})" if roles else ": the presets agree"))


def register_diff(param_app: typer.Typer) -> None:
    """Add `diff` to the `param` command group."""
    param_app.command("diff")(param_diff)
