"""Rewrite a preset's exponents in its raw TOML table, and write it back as a preset file.

The solver (runs.analysis.solver) changes a few exponents of a preset and must hand back an ordinary
preset file (docs/parameterizations.md) that `param show`, sweeps and the dashboard take like any other.
It rewrites the table `tomllib` reads, not ssm.presets objects, so that every key it does not touch —
multipliers, descriptions, keys a newer preset format adds — passes through unchanged. What a table's
exponents *are* is read through the one preset layer (ssm.presets.parse_preset, torch-free): this
module only edits tables and renders TOML. The caller validates the result with ssm.presets.parse_preset.

Exponent kinds: "init" (the role's init exponents), "lr.sgd", "lr.adam" (its learning-rate exponents for
an optimizer family). A role's table holds the common rule and optional per-discretisation overrides
(`[roles.<role>.zoh]`, `[roles.<role>.euler]`); an override's `init` or `lr` replaces the common one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from ssmscope.ssm.config import Discretization, OptimizerFamily
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.exponents import Pair
from ssmscope.ssm.presets import Preset, parse_preset
from ssmscope.ssm.roles import Family, Role

DISCRETIZATIONS = tuple(d.value for d in Discretization)
"""The per-discretisation override tables a role may have."""
EXPONENT_KINDS = ("init", *(f"lr.{f.value}" for f in OptimizerFamily))
"""What the solver may shift: a role's init exponents or its learning-rate exponents per family."""
FAMILY_DISCRETIZATIONS = {Family.MAMBA: DISCRETIZATIONS, Family.MAMBA2: (Discretization.EULER.value,)}
"""The discretisations a family's models run (SSD: Euler only): a Mamba-2 preset's shifts go to the common rule."""
_INLINE_KEYS = {"init", "lr", "mult"}  # role keys written as inline tables; other tables are sub-tables
_AXES = ("n_u", "n_x")
TABLE_SOURCE = "preset table"
"""How errors name a raw table read here (it has no file)."""

def effective(raw: Mapping[str, Any]) -> Preset:
    """The raw table as the preset layer reads it (validated; its init base is not loaded: exponents do
    not depend on it)."""
    return parse_preset(raw, TABLE_SOURCE, resolve_base=False)


def exponents(raw: Mapping[str, Any] | Preset, role: str, disc: str, kind: str) -> Pair:
    """The effective (n_u, n_x) of `kind` for `role` under discretisation `disc` (override, else common),
    as ssm.presets resolves them; `raw` is a preset table or a Preset already read with `effective`."""
    if kind not in EXPONENT_KINDS:
        raise ConfigError(f"exponent kind {kind!r}; allowed: {', '.join(EXPONENT_KINDS)}")
    if role not in Role._value2member_map_:
        raise ConfigError(f"preset has no role {role!r}")
    preset = raw if isinstance(raw, Preset) else effective(raw)
    rule = preset.scaling(Role(role), disc)
    exps = rule.init if kind == "init" else rule.lr[OptimizerFamily(kind.split(".", 1)[1])]
    return exps.pair


def _common(raw: Mapping[str, Any], role: str) -> dict[str, Pair]:
    """The exponents of `role`'s common rule (what a discretisation without an override gets), per kind."""
    stripped = copy.deepcopy(dict(raw))
    table = stripped["roles"][role]
    for disc in DISCRETIZATIONS:
        table.pop(disc, None)
    preset = effective(stripped)
    return {kind: exponents(preset, role, DISCRETIZATIONS[0], kind) for kind in EXPONENT_KINDS}


def _as_table(pair: Pair) -> dict[str, Any]:
    """{n_u, n_x} with zero entries left out (a missing axis is 0), fractions as exact strings."""
    out: dict[str, Any] = {}
    for axis, value in zip(_AXES, pair, strict=True):
        if value != 0:
            out[axis] = int(value) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    return out


def _lr_table(pairs: tuple[Pair, Pair]) -> dict[str, Any]:
    """{sgd = …, adam = …} from the (sgd, adam) exponent pairs."""
    return {"sgd": _as_table(pairs[0]), "adam": _as_table(pairs[1])}


def with_exponents(raw: Mapping[str, Any], new: Mapping[tuple[str, str, str], Pair]) -> dict[str, Any]:
    """A copy of `raw` in which each (role, disc, kind) has the exponents `new` gives; the rest unchanged.

    Each touched role is rewritten per table: its `init`, and its `lr` (both families, as the preset format
    requires of an override). When the discretisations the preset's family runs (FAMILY_DISCRETIZATIONS: S6 both,
    Mamba-2 Euler only) end up equal the value goes to the common table and the overrides of that table are
    dropped; otherwise the common table keeps what it had and each discretisation whose value differs from it
    gets an override. Other keys (mult, mult_base, decay, [preset] family, sub-tables a newer preset format adds)
    are kept as they were.
    """
    out = copy.deepcopy(dict(raw))
    current = effective(raw)
    discs = FAMILY_DISCRETIZATIONS[current.family]
    for role in sorted({role for role, _, _ in new}):
        table = out["roles"][role]
        eff = {d: {k: new.get((role, d, k), exponents(current, role, d, k)) for k in EXPONENT_KINDS}
               for d in discs}
        init = {d: eff[d]["init"] for d in discs}
        lr = {d: (eff[d]["lr.sgd"], eff[d]["lr.adam"]) for d in discs}
        common = _common(raw, role)
        common_lr = (common["lr.sgd"], common["lr.adam"])
        common_init = common["init"]
        if len(set(init.values())) == 1:
            common_init = init[discs[0]]
        if len(set(lr.values())) == 1:
            common_lr = lr[discs[0]]
        table["init"] = _as_table(common_init)
        table["lr"] = _lr_table(common_lr)
        for disc in discs:
            override = table.get(disc) if isinstance(table.get(disc), dict) else {}
            override.pop("init", None)
            override.pop("lr", None)
            if init[disc] != common_init:
                override["init"] = _as_table(init[disc])
            if lr[disc] != common_lr:
                override["lr"] = _lr_table(lr[disc])
            if override:
                table[disc] = override
            else:
                table.pop(disc, None)
        # keep the usual key order: init, lr, the rest, then the per-discretisation tables
        ordered = {k: table[k] for k in ("init", "lr") if k in table}
        ordered |= {k: v for k, v in table.items() if k not in ordered and k not in DISCRETIZATIONS}
        ordered |= {k: table[k] for k in DISCRETIZATIONS if k in table}
        out["roles"][role] = ordered
    return out


# --- writing TOML ----------------------------------------------------------------------------------
def _value(value: Any) -> str:
    """A TOML value: strings, booleans, numbers, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} to TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _table(lines: list[str], path: str, table: Mapping[str, Any], notes: Mapping[str, list[str]]) -> None:
    """[path] with its scalar and inline keys, then its sub-tables; notes[path] as comments above it."""
    lines.append("")
    lines += [f"# {n}" for n in notes.get(path, [])]
    lines.append(f"[{path}]")
    nested = []
    for key, value in table.items():
        if isinstance(value, dict) and key not in _INLINE_KEYS:
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        _table(lines, f"{path}.{_key(key)}", value, notes)


def render(raw: Mapping[str, Any], header: list[str], notes: Mapping[str, list[str]] | None = None) -> str:
    """The preset as TOML text: `header` as comment lines, then [preset], then one table per role.

    notes maps a table path ("roles.x_proj_B", "roles.x_proj_B.euler") to comment lines written above it.
    """
    notes = notes or {}
    lines = [f"# {h}" if h else "#" for h in header]
    for key, value in raw.items():
        if key == "roles":
            continue
        if isinstance(value, dict):
            _table(lines, key, value, notes)
        else:
            lines.insert(len(header), f"{_key(key)} = {_value(value)}")
    for role, table in raw.get("roles", {}).items():
        _table(lines, f"roles.{role}", table, notes)
    return "\n".join(lines).lstrip("\n") + "\n"
