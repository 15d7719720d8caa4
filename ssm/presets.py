"""Parameterizations as data: presets are tables of width exponents on an init base, read from TOML.

For every parameter role (ssm.roles.Role) a preset gives three exponent pairs (a, b):
  init std        ∝ (N_u/N_u0)^a · (N_x/N_x0)^b   (for constant roles: the value)
  learning rate   ∝ (N_u/N_u0)^a · (N_x/N_x0)^b   separately for the SGD and Adam families
  forward mult.   = (N_u/N_u0)^a · (N_x/N_x0)^b   (roles with a linear map only)
relative to a base width (N_u0, N_x0), and two optional switches: `decay = false` (the run's weight
decay does not apply) and `mult_base` (a constant forward multiplier at the base width, under the
exponents). What they scale is the preset's init base (ssm.bases):
the distribution and constant of every role at the base width, where every preset on that
base is the base's own initialisation with one global learning rate. d_model and dt_rank
scale with N_u (d = N_u/expand, R = d/16). A role may override any of the three per
discretisation ([roles.<role>.zoh] / .euler). When the readout is tied to the embedding (one
matrix, two uses) it follows the embedding's init and learning rate and keeps a forward
multiplier ([roles.readout.tied]; see readout_mult_exponents). Built-in presets are the TOML
files in ssm/presets/; user presets use the same format and the same validation (see
docs/parameterizations.md).

This module, with ssm.bases (init bases), ssm.exponents (exponent arithmetic) and ssm.config (the
Optimizer and OptimizerFamily enums), is the one preset layer: the model (ssm.apply), `param show`,
the equivalence check, the solver and the dashboard all read presets through it. It imports no torch,
so that the analyses and the dashboard stay free of it; applying a preset to a model is ssm.apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ssmscope.ssm.bases import DEFAULT_BASE, Base, builtin_base_names, load_base, resolve_base_name
from ssmscope.ssm.config import FAMILY_OF_OPTIMIZER as FAMILY_OF_OPTIMIZER
from ssmscope.ssm.config import Discretization, Readout
from ssmscope.ssm.config import Optimizer as Optimizer
from ssmscope.ssm.config import OptimizerFamily as OptimizerFamily
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.exponents import Exponents as Exponents
from ssmscope.ssm.roles import (
    FAN_IN,
    MULTIPLIER_ROLES,
    ROLES_OF_FAMILY,
    STRUCTURAL_RULES,
    Family,
    Role,
    family_of,
    role_table,
)
from ssmscope.ssm.tomlfiles import builtin_toml_names, head_table, parse_fraction, parse_number, read_builtin_or_file

TIED_READOUT = ("lm_head.weight", "embedding.weight")
"""(readout parameter, the parameter it is when tied)."""


@dataclass(frozen=True)
class RoleScaling:
    """One role's width exponents under one discretisation: init std (or value), learning rate per
    optimizer family, forward multiplier."""

    init: Exponents
    lr: Mapping[OptimizerFamily, Exponents]
    mult: Exponents
    decay: bool = True
    """Whether the run's global weight decay applies to the role's parameters (`decay = false`: a group with
    weight_decay 0, as recipes that exempt vectors from it)."""
    mult_base: float = 1.0
    """A constant forward multiplier at the base width (`mult_base`), the width exponents `mult` on top: a
    recipe's fixed multipliers (Falcon-H1's per-slice ones)."""


@dataclass(frozen=True)
class Preset:
    """A validated preset: its base width (N_u0, N_x0), per discretisation every role's RoleScaling, and
    the init base those exponents scale (see the module docstring)."""

    name: str
    description: str
    base_n_u: int
    base_n_x: int
    rules: Mapping[Discretization, Mapping[Role, RoleScaling]]
    source: str = "built-in"
    base: Base | None = None
    """The init base (ssm.bases) the exponents scale; None for presets built in code without one and for
    tables parsed with resolve_base=False."""
    tied_readout_mult: Exponents | None = None
    """Forward multiplier of a tied readout ([roles.readout.tied]); None: readout_mult_exponents' default."""
    readout: Readout = Readout.BASE
    """The preset's readout treatment ([preset] readout): `base` lets the init base tie it or not."""
    family: Family = Family.MAMBA
    """The model family whose roles the preset scales ([preset] family)."""

    @property
    def roles(self) -> tuple[Role, ...]:
        """The roles this preset has a rule for (its family's, ssm.roles.ROLES_OF_FAMILY)."""
        return ROLES_OF_FAMILY[self.family]

    def scaling(self, role: Role, disc: Discretization | str) -> RoleScaling:
        """The exponents `role` gets under discretisation `disc` (its common rule, or that rule overridden)."""
        return self.rules[Discretization(disc)][role]

    @property
    def init_base(self) -> Base:
        """The base this preset names (the default base when built without one)."""
        return self.base if self.base is not None else load_base(DEFAULT_BASE)


# ----------------------------------------------------------------------------- loading

EXPONENT_LIMIT = 8.0
"""Largest |exponent| of an init, lr or multiplier (µP's are at most 1; 8 is far past any real one, and keeps
(width ratio)^exponent finite: a preset with nan, inf or 1e308 is refused when it loads, not trained)."""
_EXP_KEYS = {"n_u", "n_x"}
_ROLE_KEYS = {"init", "lr", "mult", "decay", "mult_base"}
MULT_BASE_LIMIT = 1e3
"""Largest constant multiplier `mult_base` (and smallest 1/1e3): Falcon-H1's are within 0.03…6."""
_HEAD_KEYS = ("name", "description", "base", "base_n_u", "base_n_x", "readout", "family")


def _exponents(path: str, table: Any) -> Exponents:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}={table!r}; allowed: a table like {{n_u = -0.5, n_x = 0}}")
    unknown = set(table) - _EXP_KEYS
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}: unknown key; allowed: n_u, n_x")
    return Exponents(**{k: parse_fraction(f"{path}.{k}", v, EXPONENT_LIMIT) for k, v in table.items()})


def _lr(path: str, table: Any) -> dict[OptimizerFamily, Exponents]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}={table!r}; allowed: a table with keys sgd and adam")
    allowed = {f.value for f in OptimizerFamily}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}: unknown optimizer; allowed: sgd, adam")
    missing = allowed - set(table)
    if missing:
        raise ConfigError(f"{path}: missing optimizer {sorted(missing)[0]!r}; give both sgd and adam")
    return {OptimizerFamily(k): _exponents(f"{path}.{k}", v) for k, v in table.items()}


def _subtables(role: Role) -> set[str]:
    """Override tables a role may carry: per discretisation, and `tied` for the readout."""
    return {d.value for d in Discretization} | ({"tied"} if role == Role.READOUT else set())


def _role_scaling(path: str, table: dict[str, Any], role: Role, base: RoleScaling | None) -> RoleScaling:
    subtables = _subtables(role) if base is None else set()
    unknown = set(table) - _ROLE_KEYS - subtables
    if unknown:
        allowed = ", ".join(sorted(_ROLE_KEYS | subtables))
        raise ConfigError(f"{path}.{sorted(unknown)[0]}: unknown key; allowed: {allowed}")
    if base is None:
        for key in ("init", "lr"):
            if key not in table:
                raise ConfigError(f"{path}: missing key {key!r}")
    init = _exponents(f"{path}.init", table["init"]) if "init" in table else base.init
    lr = _lr(f"{path}.lr", table["lr"]) if "lr" in table else base.lr
    mult = _exponents(f"{path}.mult", table["mult"]) if "mult" in table else (
        base.mult if base else Exponents())
    if role in STRUCTURAL_RULES and init != Exponents():
        raise ConfigError(f"{path}.init: role {role} has a structural init and cannot be scaled")
    if role not in MULTIPLIER_ROLES and mult != Exponents():
        raise ConfigError(f"{path}.mult: role {role} has no linear map to multiply")
    decay = table.get("decay", base.decay if base else True)
    if not isinstance(decay, bool):
        raise ConfigError(f"{path}.decay={decay!r}; allowed: true or false")
    mult_base = _mult_base(path, table["mult_base"]) if "mult_base" in table else (
        base.mult_base if base else 1.0)
    if role not in MULTIPLIER_ROLES and mult_base != 1.0:
        raise ConfigError(f"{path}.mult_base: role {role} has no linear map to multiply")
    return RoleScaling(init=init, lr=lr, mult=mult, decay=decay, mult_base=mult_base)


def _mult_base(path: str, value: Any) -> float:
    """A constant multiplier: a positive finite number within [1/MULT_BASE_LIMIT, MULT_BASE_LIMIT]."""
    number = parse_number(f"{path}.mult_base", value, MULT_BASE_LIMIT)
    if not number >= 1 / MULT_BASE_LIMIT:
        raise ConfigError(f"{path}.mult_base={value!r}; allowed: a positive number from 0.001 to 1000")
    return number


def _tied_mult(path: str, table: Any) -> Exponents:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}={table!r}; allowed: a table with mult")
    unknown = set(table) - {"mult"}
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}: unknown key; allowed: mult (a tied readout "
                          "takes the embedding's init and learning rate)")
    if "mult" not in table:
        raise ConfigError(f"{path}: missing key 'mult'")
    return _exponents(f"{path}.mult", table["mult"])


def _head(source: str, table: Any) -> tuple[str, dict[str, int], str, Readout, Family]:
    head, name = head_table(source, "preset", table, _HEAD_KEYS)
    widths = {}
    for key in ("base_n_u", "base_n_x"):
        v = head.get(key, 32)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{source}: preset.{key}={v!r}; allowed: a positive integer")
        widths[key] = v
    base = head.get("base", DEFAULT_BASE)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{source}: preset.base={base!r}; allowed: {', '.join(builtin_base_names())} "
                          "or a base .toml file")
    readout = head.get("readout", Readout.BASE.value)
    if readout not in {r.value for r in Readout}:
        raise ConfigError(f"{source}: preset.readout={readout!r}; allowed: {', '.join(r.value for r in Readout)}")
    return name, widths, base, Readout(readout), family_of(source, head, "preset")


def parse_preset(data: Mapping[str, Any], source: str, *, resolve_base: bool = True) -> Preset:
    """Validate a preset table (as read from TOML); errors name the key and what is allowed.

    `resolve_base=False` validates everything but does not load the init base the head names (the
    result's `base` is None): for reading a table's exponents, which do not depend on the base (the
    solver's rewritten tables carry no file location to find a relative base path from).
    """
    unknown = set(data) - {"preset", "roles"}
    if unknown:
        raise ConfigError(f"{source}: {sorted(unknown)[0]}: unknown key; allowed: preset, roles")
    name, widths, base_name, readout, family = _head(source, data.get("preset"))
    base = None
    if resolve_base:
        try:
            base = load_base(base_name, relative_to=Path(source) if source.endswith(".toml") else None)
        except ConfigError as exc:
            raise ConfigError(f"{source}: preset.base: {exc}") from None
        if base.family != family:
            raise ConfigError(f"{source}: preset.base={base_name!r} initialises family {base.family}, the preset "
                              f"is for family {family}; allowed: a {family} base")
    roles = role_table(source, data, "every role needs a rule", family)
    rules: dict[Discretization, dict[Role, RoleScaling]] = {d: {} for d in Discretization}
    tied_mult = None
    for role in ROLES_OF_FAMILY[family]:
        table = roles[role.value]
        path = f"{source}: roles.{role.value}"
        if not isinstance(table, dict):
            raise ConfigError(f"{path}={table!r}; allowed: a table with init, lr, mult")
        common = _role_scaling(path, table, role, None)
        for disc in Discretization:
            override = table.get(disc.value)
            if override is None:
                rules[disc][role] = common
            elif not isinstance(override, dict):
                raise ConfigError(f"{path}.{disc.value}={override!r}; allowed: a table")
            else:
                rules[disc][role] = _role_scaling(f"{path}.{disc.value}", override, role, common)
        if "tied" in table:
            tied_mult = _tied_mult(f"{path}.tied", table["tied"])
    return Preset(name=name, description=str(data["preset"].get("description", "")),
                  base_n_u=widths["base_n_u"], base_n_x=widths["base_n_x"], rules=rules,
                  source=source, base=base, tied_readout_mult=tied_mult, readout=readout, family=family)


def builtin_names(family: Family | str | None = None) -> list[str]:
    """Names of the built-in presets (the TOML files in ssm/presets/); with `family`, only that family's."""
    names = builtin_toml_names("ssmscope.ssm", "presets")
    if family is None:
        return names
    return [n for n in names if preset_family(n) == Family(family)]


def preset_family(name_or_path: str | Path) -> Family:
    """The family a preset names in its head (mamba when it names none or cannot be read: a broken preset fails
    in its own run), read without validating the rest."""
    value = _head_value(name_or_path, "family")
    return Family(value) if value in Family._value2member_map_ else Family.MAMBA


def _head_value(name_or_path: str | Path, key: str) -> Any:
    """`key` of a preset's [preset] head, or None when the file cannot be read or the head lacks it (the
    validated reading is load_preset's)."""
    try:
        data, _ = read_builtin_or_file("ssmscope.ssm", "presets", "preset", name_or_path)
    except ConfigError:
        return None
    head = data.get("preset")
    return head.get(key) if isinstance(head, dict) else None


def load_preset(name_or_path: str | Path) -> Preset:
    """A built-in preset by name (sp, mup, mup-ssm) or a user preset from a TOML file."""
    data, source = read_builtin_or_file("ssmscope.ssm", "presets", "preset", name_or_path)
    return parse_preset(data, source)


def preset_base_name(name_or_path: str | Path) -> str:
    """The init base a preset names (as a run stores it), read without validating the rest of the
    preset: a broken preset fails in its own run, as it did before bases existed."""
    try:
        data, source = read_builtin_or_file("ssmscope.ssm", "presets", "preset", name_or_path)
    except ConfigError:
        return DEFAULT_BASE
    head = data.get("preset")
    name = head.get("base", DEFAULT_BASE) if isinstance(head, dict) else DEFAULT_BASE
    if not isinstance(name, str) or not name:
        return DEFAULT_BASE
    return resolve_base_name(name, Path(source) if source.endswith(".toml") else None)


def with_base(preset: Preset, base: Base | str | None) -> Preset:
    """The preset on another init base (None: unchanged); its exponents stay as they are."""
    if base is None:
        return preset
    return replace(preset, base=base if isinstance(base, Base) else load_base(base))


# ----------------------------------------------------------------------------- base exponents


def original_exponents(base: Base) -> dict[Role, Exponents]:
    """The width exponents of the base's own rules (fan_in^p with fan_in ∝ N_u^k gives N_u^(p·k)).

    A preset with these init exponents reproduces the base's original code at every width
    (exactly where dt_rank = d_model/16 has no rounding, i.e. d_model a multiple of 16).
    Structural and constant roles get 0.
    """
    out = {}
    for role, rb in base.roles.items():
        if rb.fan_in_power and role in FAN_IN:
            f = FAN_IN[role]
            out[role] = Exponents(rb.fan_in_power * f.n_u, rb.fan_in_power * f.n_x)
        else:
            out[role] = Exponents()
    return out


def original_preset(base: Base | str, base_n_u: int = 32, base_n_x: int = 32) -> Preset:
    """The base's own code as a preset: its width exponents, one global learning rate, a tied
    readout without multiplier. `apply_preset` with it initialises a model as the original does
    at any width (see original_exponents); at the base width it coincides with every preset."""
    base = base if isinstance(base, Base) else load_base(base)
    exps = original_exponents(base)
    flat = {f: Exponents() for f in OptimizerFamily}
    table = {role: RoleScaling(init=exps[role], lr=flat, mult=Exponents()) for role in base.roles}
    return Preset(name=f"original-{base.name}", description=f"{base.name}'s own initialisation at every width",
                  base_n_u=base_n_u, base_n_x=base_n_x, rules={d: table for d in Discretization},
                  source="original_preset", base=base, tied_readout_mult=Exponents(), family=base.family)


# ----------------------------------------------------------------------------- widths


def width_ratios(cfg: Any, preset: Preset) -> tuple[float, float]:
    """(N_u/N_u0, N_x/N_x0): N_u = d_inner, N_x = d_state, for both families."""
    return cfg.d_inner / preset.base_n_u, cfg.d_state / preset.base_n_x


def base_config(cfg: Any, preset: Preset) -> Any:
    """The config at the preset's base width (same depth, expand, vocabulary; for Mamba-2 the same head
    dimension where it divides the base d_inner, else the same number of heads: a base's scales depend only
    on d_model, d_inner, d_conv and n_layers, so either gives the same init)."""
    if preset.base_n_u % cfg.expand:
        raise ConfigError(f"preset {preset.name}: base_n_u={preset.base_n_u} is not a multiple "
                          f"of expand={cfg.expand}")
    if not hasattr(cfg, "headdim"):
        return replace(cfg, d_model=preset.base_n_u // cfg.expand, d_state=preset.base_n_x)
    for headdim in (cfg.headdim, preset.base_n_u // cfg.nheads):
        if headdim and preset.base_n_u % headdim == 0 and (preset.base_n_u // headdim) % cfg.ngroups == 0:
            return replace(cfg, d_model=preset.base_n_u // cfg.expand, d_state=preset.base_n_x, headdim=headdim)
    raise ConfigError(f"preset {preset.name}: base_n_u={preset.base_n_u} fits neither headdim={cfg.headdim} nor "
                      f"nheads={cfg.nheads} with ngroups={cfg.ngroups}")


def readout_tied(cfg: Any, preset: Preset) -> bool:
    """Whether the readout shares the embedding matrix: the config decides if it says, else the preset's own
    readout ([preset] readout), else its init base."""
    if cfg.tie_readout is not None:
        return bool(cfg.tie_readout)
    if preset.readout != Readout.BASE:
        return bool(preset.readout.tie)
    return preset.init_base.tied_readout


def readout_zero(cfg: Any, preset: Preset) -> bool:
    """Whether an untied readout starts at zero: the config's choice when it names a readout, else the preset's."""
    return cfg.zero_readout if cfg.tie_readout is not None else preset.readout.zero


def preset_readout(name_or_path: str | Path) -> Readout:
    """The readout a preset names in its head (BASE when it names none or cannot be read: a broken preset fails in
    its own run), read without validating the rest: a sweep expands it into its runs' configs."""
    value = _head_value(name_or_path, "readout")
    return Readout(value) if value in {r.value for r in Readout} else Readout.BASE


def readout_mult_exponents(preset: Preset, disc: Discretization) -> Exponents:
    """Forward multiplier of a tied readout.

    The preset's [roles.readout.tied] mult if given; otherwise the multiplier that gives the
    tied readout the effective init scaling the preset declares for an untied one: readout
    mult + readout init − embedding init (the embedding's matrix already carries the latter).
    """
    if preset.tied_readout_mult is not None:
        return preset.tied_readout_mult
    r, e = preset.scaling(Role.READOUT, disc), preset.scaling(Role.EMBEDDING, disc)
    return r.mult + r.init - e.init
