"""Which presets are the same parameterization for a selection, judged from their resolved width exponents.

Two presets build the same model at a width point (N_u, N_x) when they share a base width and every
parameter role gets the same init scale, learning-rate factor and forward multiplier there. Presets
that coincide at every width point of a selection produce identical runs, so their rows in a slope
table coincide; the tables say so instead of leaving two equal rows to look like a bug. The classic
case: µP and µP-SSM under ZOH + Adam on the joint axis N_u = N_x, where W_B and W_C scale as
N_u^-1·N_x^½ and N_u^-½ — different splits of the same power of the width.

Nothing is hard-coded: each preset is read through the preset layer (ssm.presets.load_preset, torch-free,
so the dashboard stays free of torch) and its exponents are what `Preset.scaling(role, disc)` gives — the
ones the model is initialised and trained with. A preset that cannot be read or does not validate (a moved
TOML file) is never reported equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import polars as pl

from ssmscope.runs.analysis.slopes.fit import on_axis
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS, WIDTH_KEYS
from ssmscope.ssm.config import FAMILY_OF_OPTIMIZER as FAMILY_OF_OPTIMIZER
from ssmscope.ssm.config import Discretization, OptimizerFamily
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.exponents import Pair
from ssmscope.ssm.presets import Exponents, load_preset, readout_mult_exponents

SCALED = ("init", "lr", "mult")
TIED_READOUT_KEY = "readout.tied"
"""The entry of Resolved.roles for a tied readout's forward multiplier (ssm.presets.readout_mult_exponents)."""
"""What a preset scales per role: init std (or value), learning rate, forward multiplier."""


@dataclass(frozen=True)
class Resolved:
    """One preset under one discretisation and optimizer family: its base width and per-role exponents."""

    base: tuple[int, int]
    roles: Mapping[str, Mapping[str, Pair]]  # role → {"init"|"lr"|"mult": (a, b)}
    constants: tuple = ()
    """What the exponents do not say and must agree as well: the init base, the readout treatment, and per role
    the constant multiplier at the base width (`mult_base`) and whether the run's weight decay applies (`decay`).
    Falcon-H1's recipe has SP's exponents and its own constants."""


@cache
def resolve(preset: str, discretization: str, optimizer: str) -> Resolved | None:
    """The exponents `preset` gives every role under a discretisation and optimizer; None if unreadable."""
    family = FAMILY_OF_OPTIMIZER.get(optimizer)
    if family is None:
        return None
    try:
        loaded = load_preset(preset)
        disc = Discretization(discretization)
    except (ConfigError, ValueError):
        return None
    roles, per_role = {}, []
    for role in loaded.roles:
        rule = loaded.scaling(role, disc)
        roles[role.value] = {"init": rule.init.pair, "lr": rule.lr[OptimizerFamily(family)].pair,
                             "mult": rule.mult.pair}
        per_role.append((role.value, rule.mult_base, rule.decay))
    zero = Exponents().pair  # a tied readout's multiplier scales with width like the rest: compared per width point
    roles[TIED_READOUT_KEY] = {"init": zero, "lr": zero, "mult": readout_mult_exponents(loaded, disc).pair}
    constants = (loaded.init_base.source, loaded.readout.value, tuple(per_role))
    return Resolved((loaded.base_n_u, loaded.base_n_x), roles, constants)


def _log_factor(pair: Pair, base: tuple[int, int], width: tuple[int, int]) -> float:
    """log of (N_u/N_u0)^a · (N_x/N_x0)^b at one width point."""
    return float(pair[0]) * math.log(width[0] / base[0]) + float(pair[1]) * math.log(width[1] / base[1])


def same_parameterization(a: str, b: str, discretization: str, optimizer: str,
                          widths: Iterable[tuple[int, int]]) -> bool:
    """True when presets a and b build identical models at every (N_u, N_x) in `widths`."""
    ra, rb = resolve(a, discretization, optimizer), resolve(b, discretization, optimizer)
    widths = list(widths)
    if (ra is None or rb is None or ra.base != rb.base or ra.constants != rb.constants or set(ra.roles) != set(rb.roles)
            or not widths):
        return False
    return all(math.isclose(_log_factor(ra.roles[role][k], ra.base, w), _log_factor(rb.roles[role][k], rb.base, w),
                            abs_tol=1e-12)
               for role in ra.roles for k in SCALED for w in widths)


@dataclass(frozen=True)
class Coincidence:
    """Presets that are one parameterization for a (discretisation, optimizer) of a selection."""

    presets: tuple[str, ...]
    discretization: str
    optimizer: str

    def note(self) -> str:
        names = ", ".join(self.presets[:-1]) + " and " + self.presets[-1]
        return (f"{names} are the same parameterization for {self.discretization} · {self.optimizer} at these "
                "widths (every role's init, learning-rate and multiplier scale coincide), so their rows coincide.")


def coincidences(frame: pl.DataFrame, design: str, order: Iterable[str] = ()) -> list[Coincidence]:
    """Groups of ≥ 2 presets that coincide per (discretisation, optimizer) over the width points of `frame`.

    `frame` has preset, discretization, optimizer, n_u, n_x (a probe or runs frame); the width points are
    those the fits of `design` use (joint: N_u = N_x only). `order` lists presets in display order.
    """
    need = {*PARAMETERIZATION_KEYS, *WIDTH_KEYS}
    if frame.is_empty() or not need <= set(frame.columns):
        return []
    points = frame.select(*need).unique().filter(on_axis(design))
    rank = {p: i for i, p in enumerate(order)}
    found = []
    for (disc, opt), part in sorted(points.group_by("discretization", "optimizer"), key=lambda kv: kv[0]):
        widths = {p: set(zip(g["n_u"], g["n_x"], strict=True)) for (p,), g in part.group_by("preset")}
        presets = sorted(widths, key=lambda p: (rank.get(p, len(rank)), p))
        classes: list[list[str]] = []
        for p in presets:
            for cls in classes:
                head = cls[0]
                if widths[p] == widths[head] and same_parameterization(head, p, disc, opt, widths[p]):
                    cls.append(p)
                    break
            else:
                classes.append([p])
        found += [Coincidence(tuple(c), disc, opt) for c in classes if len(c) > 1]
    return found
