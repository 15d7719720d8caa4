"""What the exponent solver flattens, and with which knobs: the objective, as data (docs/solver.md).

An objective names
  targets        the slopes that must be flat: (site, quantity, step), each fitted per layer and per
                 discretisation; the solver has converged when every one is within ±tolerance;
  conventions    the norm of each site, optionally per discretisation ("x.zoh" = channel_l2: the ZOH
                 state's RMS falls like N_x^−½ by construction, its per-channel norm is the width-stable
                 quantity; docs/theory.md §5);
  update_sites   the sites whose per-group Δ set the learning-rate shifts, at update_step;
  init_knobs     the read-in and read-out roles whose init exponents flatten forward sites at step 0;
  tolerance, grid, max_iterations.

Each model family has its default (`default_objective`): S6's (DEFAULT_OBJECTIVE) and Mamba-2's
(MAMBA2_OBJECTIVE: the read-in/read-out knobs are in_proj_B / in_proj_C, and C·h is a target and an update site,
because SSD's y carries the D_h·x skip of every channel, which hides how the readout C·h scales).

`ssmscope param fit --objective FILE.toml` reads an [objective] table with these keys (any left out keep
the default); every mistake is one ConfigError naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.predictions import Convention
from ssmscope.ssm.tomlfiles import read_toml

TARGET_SITES = ("x", "y", "cx", "block_out")
"""Sites a target may name (the forward activations with a step-0 value and a Δ)."""
TARGET_QUANTITIES = ("value", "delta_init")
UPDATE_SITES = ("x", "y", "cx", "block_out")
"""Sites the per-group update probes record."""
INIT_KNOB_ROLES_BY_FAMILY: dict[str, tuple[str, str]] = {"mamba": ("x_proj_B", "x_proj_C"),
                                                          "mamba2": ("in_proj_B", "in_proj_C")}
"""Per model family (ssm.roles.Family): the roles whose init exponent the solver may move, the read-in W_B and the
read-out W_C of the state."""
INIT_KNOB_ROLES = tuple(r for roles in INIT_KNOB_ROLES_BY_FAMILY.values() for r in roles)
"""Every family's init-knob roles (what an objective file may name; `check_family` checks the family's)."""
DISCRETIZATIONS = ("zoh", "euler")


@dataclass(frozen=True)
class Target:
    """One slope that must be flat: ‖site‖ (quantity) at `step` ("last": each configuration's last step)."""

    site: str
    quantity: str
    step: int | str = "last"

    def label(self) -> str:
        prefix = "Δ" if self.quantity == "delta_init" else ""
        return f"‖{prefix}{'C·x' if self.site == 'cx' else self.site}‖ @ step {self.step}"


@dataclass(frozen=True)
class InitKnob:
    """An init exponent that flattens a forward site at step 0.

    `after`: knobs whose shift also moves this site (C·x ∝ c_C·c_B: the read-out's target slope already
    includes the read-in's shift). Forward sites at init are linear in these weights, so the shift that
    flattens a site is minus its slope, less what the earlier knobs moved it by.
    """

    role: str
    site: str
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Objective:
    """Targets, conventions, knobs and stopping rule of one solve (module docstring)."""

    targets: tuple[Target, ...] = (Target("x", "value"), Target("y", "value"), Target("x", "delta_init"),
                                   Target("y", "delta_init"))
    conventions: Mapping[str, str] = field(default_factory=lambda: {"x.zoh": Convention.CHANNEL_L2.value})
    update_sites: tuple[str, ...] = ("x", "y")
    update_step: int | str = "last"
    init_knobs: tuple[InitKnob, ...] = (InitKnob("x_proj_B", "x"), InitKnob("x_proj_C", "cx", ("x_proj_B",)))
    tolerance: float = 0.15
    grid: Fraction = Fraction(1, 4)
    max_iterations: int = 4

    def convention(self, site: str, disc: str) -> str:
        """The norm convention of `site` under `disc` ("site.disc", else "site", else rms)."""
        return self.conventions.get(f"{site}.{disc}", self.conventions.get(site, Convention.RMS.value))

    def lines(self) -> list[str]:
        """The objective in words, one line each (printed by `param fit` and written into the preset)."""
        conv = ", ".join(f"{k} {v}" for k, v in sorted(self.conventions.items())) or "none"
        knobs = ", ".join(f"{k.role} ← {k.site} @ step 0" + (f" (after {', '.join(k.after)})" if k.after else "")
                          for k in self.init_knobs) or "none"
        return [
            f"targets: {'; '.join(t.label() for t in self.targets)} — every layer, every discretisation",
            f"flat: |slope| ≤ {self.tolerance:g} per doubling of width",
            f"conventions: rms unless named: {conv}",
            f"learning-rate knobs: each probed group's lr exponent, minus its energy-share-weighted Δ slope over "
            f"{', '.join(self.update_sites)} @ step {self.update_step}",
            f"init knobs: {knobs}",
            f"exponents rounded to multiples of {self.grid}; at most {self.max_iterations} re-sweeps",
        ]


DEFAULT_OBJECTIVE = Objective()
"""The objective of the issue's validation: ‖x‖ ‖y‖ ‖Δx‖ ‖Δy‖ at the last step, ZOH state per channel."""

MAMBA2_OBJECTIVE = Objective(
    targets=(*DEFAULT_OBJECTIVE.targets, Target("cx", "value"), Target("cx", "delta_init")),
    update_sites=("x", "y", "cx"),
    init_knobs=(InitKnob("in_proj_B", "x"), InitKnob("in_proj_C", "cx", ("in_proj_B",))))
"""Mamba-2's default: S6's targets plus ‖C·h‖ and ‖Δ(C·h)‖ (y = C·h + D_h·x is floored by the skip, so a flat ‖y‖
and ‖Δy‖ can hide a growing readout), C·h an update site as well, and the init knobs on in_proj_B / in_proj_C."""

OBJECTIVES: dict[str, Objective] = {"mamba": DEFAULT_OBJECTIVE, "mamba2": MAMBA2_OBJECTIVE}
"""Per model family (ssm.roles.Family value): its default objective."""


def default_objective(family: str = "mamba") -> Objective:
    """The default objective of a model family ("mamba": S6, "mamba2": SSD)."""
    if family not in OBJECTIVES:
        raise ConfigError(f"model family {family!r}; allowed: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[family]


def check_family(objective: Objective, family: str, source: str = "objective") -> None:
    """Every init knob names a role of `family` (S6's x_proj_B does not exist in Mamba-2, nor in_proj_B in S6)."""
    allowed = INIT_KNOB_ROLES_BY_FAMILY[family]
    for i, knob in enumerate(objective.init_knobs):
        if knob.role not in allowed:
            raise ConfigError(f"{source}: objective.init_knobs[{i}].role={knob.role!r} is not a {family} role; "
                              f"allowed for {family}: {', '.join(allowed)}")


def _site(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}; allowed: {', '.join(allowed)}")
    return str(value)


def _step(value: Any, key: str) -> int | str:
    if value == "last" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ConfigError(f"{key}={value!r}; allowed: a step number >= 0 or \"last\"")


def _convention(value: Any, key: str) -> str:
    try:
        return Convention(value).value
    except ValueError:
        raise ConfigError(f"{key}={value!r}; allowed: {', '.join(c.value for c in Convention)}") from None


def parse_objective(data: Mapping[str, Any], source: str = "objective", family: str = "mamba") -> Objective:
    """An Objective from an [objective] table (keys as the dataclass; missing keys keep the family's defaults)."""
    table = data.get("objective")
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: missing table [objective]")
    allowed = {"targets", "conventions", "update_sites", "update_step", "init_knobs", "tolerance", "grid",
               "max_iterations"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{source}: objective.{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")
    out = default_objective(family)
    if "targets" in table:
        targets = table["targets"]
        if not isinstance(targets, list) or not targets:
            raise ConfigError(f"{source}: objective.targets; allowed: a non-empty list of "
                              "{site = \"x\", quantity = \"value\", step = \"last\"}")
        parsed = []
        for i, t in enumerate(targets):
            key = f"{source}: objective.targets[{i}]"
            if not isinstance(t, dict) or set(t) - {"site", "quantity", "step"}:
                raise ConfigError(f"{key}={t!r}; allowed: {{site, quantity, step}}")
            parsed.append(Target(_site(t.get("site"), f"{key}.site", TARGET_SITES),
                                 _site(t.get("quantity", "value"), f"{key}.quantity", TARGET_QUANTITIES),
                                 _step(t.get("step", "last"), f"{key}.step")))
        out = replace(out, targets=tuple(parsed))
    if "conventions" in table:
        conv = table["conventions"]
        if not isinstance(conv, dict):
            raise ConfigError(f"{source}: objective.conventions; allowed: a table like {{\"x.zoh\" = \"channel_l2\"}}")
        checked = {}
        for k, v in conv.items():
            site, _, disc = str(k).partition(".")
            _site(site, f"{source}: objective.conventions key {k!r} site", TARGET_SITES)
            if disc:
                _site(disc, f"{source}: objective.conventions key {k!r} discretisation", DISCRETIZATIONS)
            checked[str(k)] = _convention(v, f"{source}: objective.conventions.{k}")
        out = replace(out, conventions=checked)
    if "update_sites" in table:
        sites = table["update_sites"]
        if not isinstance(sites, list) or not sites:
            raise ConfigError(f"{source}: objective.update_sites={sites!r}; allowed: a non-empty list of "
                              f"{', '.join(UPDATE_SITES)}")
        out = replace(out, update_sites=tuple(_site(s, f"{source}: objective.update_sites", UPDATE_SITES)
                                              for s in sites))
    if "update_step" in table:
        out = replace(out, update_step=_step(table["update_step"], f"{source}: objective.update_step"))
    if "init_knobs" in table:
        out = replace(out, init_knobs=_knobs(table["init_knobs"], source))
    if "tolerance" in table:
        tol = table["tolerance"]
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 2:
            raise ConfigError(f"{source}: objective.tolerance={tol!r}; allowed: a number in (0, 2)")
        out = replace(out, tolerance=float(tol))
    if "grid" in table:
        out = replace(out, grid=parse_grid(table["grid"], f"{source}: objective.grid"))
    if "max_iterations" in table:
        n = table["max_iterations"]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 20:
            raise ConfigError(f"{source}: objective.max_iterations={n!r}; allowed: an integer 0..20")
        out = replace(out, max_iterations=n)
    check_family(out, family, source)
    return out


def _knobs(value: Any, source: str) -> tuple[InitKnob, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{source}: objective.init_knobs; allowed: a list of {{role, site, after}} (may be empty)")
    knobs: list[InitKnob] = []
    for i, k in enumerate(value):
        key = f"{source}: objective.init_knobs[{i}]"
        if not isinstance(k, dict) or set(k) - {"role", "site", "after"}:
            raise ConfigError(f"{key}={k!r}; allowed: {{role, site, after}}")
        role = _site(k.get("role"), f"{key}.role", INIT_KNOB_ROLES)
        after = k.get("after", [])
        earlier = {kn.role for kn in knobs}
        if not isinstance(after, list) or any(a not in earlier for a in after):
            raise ConfigError(f"{key}.after={after!r}; allowed: roles of knobs listed before it "
                              f"({', '.join(sorted(earlier)) or 'none'})")
        knobs.append(InitKnob(role, _site(k.get("site"), f"{key}.site", TARGET_SITES), tuple(after)))
    return tuple(knobs)


def parse_grid(value: Any, key: str = "--grid") -> Fraction:
    """A rounding grid such as "1/4" or 0.25 (a positive fraction ≤ 1)."""
    try:
        grid = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        grid = Fraction(-1)
    if isinstance(value, bool) or not 0 < grid <= 1:
        raise ConfigError(f"{key}={value!r}; allowed: a positive fraction up to 1, such as 1/4")
    return grid


def load_objective(path: str | Path, family: str = "mamba") -> Objective:
    """The objective in a TOML file's [objective] table (missing keys: the model family's defaults)."""
    path = Path(path)
    if path.suffix != ".toml" or not path.is_file():
        raise ConfigError(f"objective file {str(path)!r} does not exist (give a .toml file with an [objective] table)")
    return parse_objective(read_toml(path, "objective"), str(path), family)
