"""Init bases as data: how an original implementation initialises every parameter role.

A base is a TOML table (built-ins in ssm/presets/bases/, or a user's file) that gives, per role,
a distribution and its scale as a function of the model config:

    normal      N(0, std²)             std   = c · fan_in^p · n_layers^q
    uniform     U(±√3 · std)           std   = c · fan_in^p · n_layers^q  (or `bound` = √3 · std)
    constant    every entry = value
    structural  a named formula (S4D-real A, softplus⁻¹ of a log-uniform Δ)

plus whether the readout shares the embedding matrix (`tied_readout`). fan_in is the role's
fan-in (ssm.roles.FAN_IN). A preset (ssm.presets) evaluates its base at the base width and
scales from there with its width exponents, so every preset on the same base coincides with it
at the base width. Built-ins: `mamba` (state-spaces/mamba, the default), `hf` (transformers'
MambaForCausalLM) and `ssmscope-v0` (the constants used before bases existed). Each base file
names the source lines its constants come from; tests/test_bases.py checks them against the
originals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssmscope.ssm.config import MambaConfig
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.exponents import fraction_text
from ssmscope.ssm.roles import FAN_IN, ROLES_OF_FAMILY, STRUCTURAL_RULES, Family, InitKind, Role, family_of, role_table
from ssmscope.ssm.tomlfiles import builtin_toml_names, head_table, parse_number, read_builtin_or_file

DEFAULT_BASE = "mamba"
"""The base a preset uses when it names none: SP is meant to be Mamba's own initialisation."""
LEGACY_BASE = "ssmscope-v0"
"""The constants every run recorded before bases existed was initialised with."""

SCALE_LIMIT = 1e3
"""Largest |std|, |bound| or |value| of a role at the base width (the built-ins' are at most 1)."""
POWER_LIMIT = 8.0
"""Largest |fan_in_power| or |n_layer_power| (the built-ins' are 0 or -1/2); as ssm.presets.EXPONENT_LIMIT."""
BASE_FOLDER = "presets/bases"
DISTS = (InitKind.NORMAL, InitKind.UNIFORM, InitKind.CONSTANT, InitKind.STRUCTURAL)
_HEAD_KEYS = ("name", "description", "tied_readout", "family")
_ROLE_KEYS = {"dist", "std", "bound", "value", "fan_in_power", "n_layer_power", "rule"}
_SCALE_KEYS = {  # dist → the keys that may give its scale (exactly one is needed)
    InitKind.NORMAL: ("std",),
    InitKind.UNIFORM: ("std", "bound"),
    InitKind.CONSTANT: ("value",),
    InitKind.STRUCTURAL: (),
}


@dataclass(frozen=True)
class RoleBase:
    """One role's initialisation in a base."""

    dist: InitKind
    scale: float = 0.0
    """c: the std's constant (normal, uniform) or the value (constant); unused for structural."""
    fan_in_power: float = 0.0
    n_layer_power: float = 0.0
    rule: str = ""
    """The structural formula's name (structural only)."""

    def scale_at(self, role: Role, cfg: MambaConfig) -> float | None:
        """std (normal, uniform) or value (constant) for a model of config `cfg`; None if structural."""
        if self.dist == InitKind.STRUCTURAL:
            return None
        value = self.scale
        if self.fan_in_power:
            value *= _power(fan_in(role, cfg), self.fan_in_power)
        if self.n_layer_power:
            value *= _power(cfg.n_layers, self.n_layer_power)
        return value

    def describe(self, role: Role) -> str:
        """The rule in words, e.g. 'U(±1·d_model^-1/2)' or 'N(0, 0.02²)' (for `param show`)."""
        if self.dist == InitKind.STRUCTURAL:
            return self.rule
        if self.dist == InitKind.CONSTANT:
            return f"{self.scale:g}"
        factors = []
        if self.fan_in_power:
            factors.append(f"{FAN_IN[role].attr}^{fraction_text(self.fan_in_power)}")
        if self.n_layer_power:
            factors.append(f"n_layers^{fraction_text(self.n_layer_power)}")
        c = self.scale * math.sqrt(3) if self.dist == InitKind.UNIFORM else self.scale
        text = "·".join(([] if factors and math.isclose(c, 1.0) else [f"{c:.4g}"]) + factors)
        if self.dist == InitKind.UNIFORM:
            return f"U(±{text})"
        return f"N(0, {text}²)" if not factors else f"N(0, ({text})²)"


@dataclass(frozen=True)
class Base:
    """A named set of per-role initialisations (see the module docstring)."""

    name: str
    description: str
    tied_readout: bool
    roles: Mapping[Role, RoleBase]
    source: str = "built-in"
    family: Family = Family.MAMBA
    """The model family whose roles the base initialises ([base] family; ssm.roles.ROLES_OF_FAMILY)."""


def _power(x: int, p: float) -> float:
    """x^p, with x^-1/2 computed as 1/√x (the float the constants were drawn with before bases)."""
    return 1.0 / math.sqrt(x) if p == -0.5 else float(x) ** p


def fan_in(role: Role, cfg: Any) -> int:
    """The role's fan-in in a model of config `cfg` (ssm.roles.FAN_IN)."""
    return int(getattr(cfg, FAN_IN[role].attr))


def role_scales(base: Base, cfg: MambaConfig) -> dict[Role, float]:
    """The RMS (std, or |value| for constants) of every non-structural role under `base` at config
    `cfg`: what an adapter that rescales another implementation's init needs as its base scales.
    A tied readout has no scale of its own and is left out."""
    tied = base.tied_readout if cfg.tie_readout is None else cfg.tie_readout
    out = {}
    for role, rb in base.roles.items():
        if role == Role.READOUT and tied:
            continue
        scale = rb.scale_at(role, cfg)
        if scale is not None:
            out[role] = abs(scale)
    return out


# ----------------------------------------------------------------------------- loading


def _role_base(path: str, table: Any, role: Role) -> RoleBase:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}={table!r}; allowed: a table with dist and its scale")
    unknown = set(table) - _ROLE_KEYS
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}: unknown key; allowed: {', '.join(sorted(_ROLE_KEYS))}")
    raw = table.get("dist")
    if raw not in {d.value for d in DISTS}:
        raise ConfigError(f"{path}.dist={raw!r}; allowed: {', '.join(d.value for d in DISTS)}")
    dist = InitKind(raw)
    structural = role in STRUCTURAL_RULES
    if structural != (dist == InitKind.STRUCTURAL):
        allowed = "structural" if structural else "normal, uniform, constant"
        raise ConfigError(f"{path}.dist={raw!r}; allowed for role {role}: {allowed}")
    given = [k for k in ("std", "bound", "value") if k in table]
    allowed_scale = _SCALE_KEYS[dist]
    stray = [k for k in given if k not in allowed_scale]
    if stray:
        raise ConfigError(f"{path}.{stray[0]}: not used by dist {dist}; "
                          f"allowed: {' or '.join(allowed_scale) or 'rule'}")
    if allowed_scale and len(given) != 1:
        what = f"one of {', '.join(allowed_scale)}" if len(allowed_scale) > 1 else allowed_scale[0]
        raise ConfigError(f"{path}: dist {dist} needs {what}" + ("" if not given else ", not both"))
    scale = 0.0
    if given:
        key = given[0]
        scale = parse_number(f"{path}.{key}", table[key], SCALE_LIMIT)
        if key != "value" and not scale > 0:
            raise ConfigError(f"{path}.{key}={table[key]!r}; allowed: a positive number")
        if key == "bound":
            scale /= math.sqrt(3)
    powers = {}
    for key in ("fan_in_power", "n_layer_power"):
        if key in table:
            if dist not in (InitKind.NORMAL, InitKind.UNIFORM):
                raise ConfigError(f"{path}.{key}: only normal and uniform inits scale; dist is {dist}")
            if key == "fan_in_power" and role not in FAN_IN:
                raise ConfigError(f"{path}.{key}: role {role} has no fan-in")
            powers[key] = parse_number(f"{path}.{key}", table[key], POWER_LIMIT)
    rule = table.get("rule", "")
    if dist == InitKind.STRUCTURAL:
        if rule not in STRUCTURAL_RULES[role]:
            raise ConfigError(f"{path}.rule={rule or None!r}; allowed: {', '.join(STRUCTURAL_RULES[role])}")
    elif "rule" in table:
        raise ConfigError(f"{path}.rule: only structural inits name a rule; dist is {dist}")
    return RoleBase(dist=dist, scale=scale, rule=rule, **powers)


def parse_base(data: dict[str, Any], source: str) -> Base:
    """Validate a base table (as read from TOML); errors name the key and what is allowed."""
    unknown = set(data) - {"base", "roles"}
    if unknown:
        raise ConfigError(f"{source}: {sorted(unknown)[0]}: unknown key; allowed: base, roles")
    head, name = head_table(source, "base", data.get("base"), _HEAD_KEYS)
    tied = head.get("tied_readout", False)
    if not isinstance(tied, bool):
        raise ConfigError(f"{source}: base.tied_readout={tied!r}; allowed: true or false")
    family = family_of(source, head, "base")
    roles = role_table(source, data, "a base initialises every role", family)
    rules = {role: _role_base(f"{source}: roles.{role.value}", roles[role.value], role)
             for role in ROLES_OF_FAMILY[family]}
    return Base(name=name, description=str(head.get("description", "")), tied_readout=tied, roles=rules,
                source=source, family=family)


def builtin_base_names() -> list[str]:
    return builtin_toml_names("ssmscope.ssm", BASE_FOLDER)


def resolve_base_name(name_or_path: str | Path, relative_to: Path | None = None) -> str:
    """A built-in name as is; a relative path found beside `relative_to` (the preset naming it) as that path."""
    text = str(name_or_path)
    if relative_to is not None and text not in builtin_base_names() and not Path(text).is_absolute():
        beside = relative_to.parent / text
        if beside.is_file():
            return str(beside)
    return text


def load_base(name_or_path: str | Path, relative_to: Path | None = None) -> Base:
    """A built-in base by name (mamba, hf, ssmscope-v0) or a base TOML file (see resolve_base_name).

    The returned base's `source` is the name to store with a run: loading it again gives this base.
    """
    data, source = read_builtin_or_file("ssmscope.ssm", BASE_FOLDER, "base",
                                        resolve_base_name(name_or_path, relative_to))
    return parse_base(data, source)
