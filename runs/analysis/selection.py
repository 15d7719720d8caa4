"""Run selection: the `--where` language of `ssmscope slopes` and `ssmscope transfer`, and `--step`.

    key=value   key=v1,v2   key!=v   n_u>=64   "preset in (sp, mup)"   a=1 and b=2

A clause parses into `Filter`s (values typed by their column); `filter_expr` turns them into one
polars predicate, `pushdown_filters` into the {column: values} the store's loaders take. Column
names come from the store schema, so a filter can only ever name a real column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssmscope.runs.store.schema import FLOAT_FILTER_COLUMNS, INT_FILTER_COLUMNS, WHERE_COLUMNS
from ssmscope.ssm.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

STEP_HELP = "an integer step, 'last' (each configuration's last step) or 'all'"


@dataclass(frozen=True)
class Filter:
    """One `column OP value[,value…]` condition of a --where selection."""

    column: str
    op: str  # = != < <= > >=
    values: tuple[str | int | float, ...]


_FILTER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|=|<|>|\s+in\s+)\s*(.+?)\s*$",
                        re.IGNORECASE)


def filter_columns() -> list[str]:
    """Columns a --where may name: the probe frame's and the optional run keys."""
    return list(WHERE_COLUMNS)


def parse_filters(clauses: list[str]) -> list[Filter]:
    """Parse --where clauses: `key=value`, `key=v1,v2`, `key!=v`, `n_u>=64`, `preset in (sp, mup)`, and
    several joined by " and " in one clause. Values are typed by their column; quotes are stripped."""
    allowed = filter_columns()
    filters = []
    for clause in clauses:
        for part in re.split(r"\s+and\s+", clause.strip(), flags=re.IGNORECASE):
            if not part:
                continue
            match = _FILTER_RE.match(part)
            if not match:
                raise ConfigError(f"--where {part!r}; allowed: key=value, key!=value, key<value, "
                                  f"key in (a, b) with key one of {', '.join(allowed)}")
            column, op, raw = match.group(1), match.group(2).strip().lower(), match.group(3)
            if column not in allowed:
                raise ConfigError(f"--where {part!r}: unknown key {column!r}; allowed: {', '.join(allowed)}")
            op = {"==": "=", "in": "="}.get(op, op)
            raw = raw.strip().removeprefix("(").removesuffix(")")
            items = [v.strip().strip("'\"") for v in raw.split(",")]
            if op not in ("=", "!=") and len(items) != 1:
                raise ConfigError(f"--where {part!r}: {op} takes one value")
            filters.append(Filter(column, op, tuple(_typed(column, v, part) for v in items)))
    return filters


def _typed(column: str, value: str, clause: str) -> str | int | float:
    """A filter value converted to its column's type."""
    try:
        if column in INT_FILTER_COLUMNS:
            return int(value)
        if column in FLOAT_FILTER_COLUMNS:
            return float(value)
    except ValueError:
        kind = "an integer" if column in INT_FILTER_COLUMNS else "a number"
        raise ConfigError(f"--where {clause!r}: {column} takes {kind}, got {value!r}") from None
    return value


def filter_expr(filters: list[Filter]) -> pl.Expr:
    """All filters and-ed into one polars predicate (True when there are none)."""
    import polars as pl

    expr = pl.lit(True)
    for f in filters:
        col = pl.col(f.column)
        if f.op == "=":
            cond = col.is_in(list(f.values))
        elif f.op == "!=":
            cond = ~col.is_in(list(f.values))
        else:
            v = f.values[0]
            cond = {"<": col < v, "<=": col <= v, ">": col > v, ">=": col >= v}[f.op]
        expr = expr & cond
    return expr


def pushdown_filters(filters: list[Filter], columns: tuple[str, ...]) -> dict[str, list[str | int | float]]:
    """The `=` filters on `columns` as {column: values} for the store's loader (a superset of the
    selection when a column is filtered twice; the polars predicate then applies every filter exactly)."""
    out: dict[str, list[str | int | float]] = {}
    for f in filters:
        if f.op == "=" and f.column in columns:
            out.setdefault(f.column, []).extend(f.values)
    return out


def parse_step(step: str) -> int | str | None:
    """--step: an integer, "last", or "all" (None: every step)."""
    if step in ("last", "all"):
        return None if step == "all" else "last"
    try:
        return int(step)
    except ValueError:
        raise ConfigError(f"--step={step!r}; allowed: {STEP_HELP}") from None
