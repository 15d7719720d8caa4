"""Width exponents as exact fractions: the arithmetic every preset reader shares (torch-free).

A preset scales a role's init, learning rate and forward multiplier by (N_u/N_u0)^n_u · (N_x/N_x0)^n_x
(ssm.presets). The exponents are held as `Fraction`s so that the solver can shift them by grid steps
(1/4) and write them back as the fractions a person wrote ("-1/2"), and so that two presets compare
exactly; a factor is computed from the same double the TOML number was, so the model gets the same
floats whether an exponent was written -0.5 or "-1/2". TOML values are read by
ssm.tomlfiles.parse_fraction; this module converts numbers and renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

SIMPLE_DENOMINATOR = 1000
"""A float exponent is read as the simplest fraction with a denominator up to this that is the same double."""

Pair = tuple[Fraction, Fraction]
"""Exponents (of N_u/N_u0, of N_x/N_x0)."""


def as_fraction(value: Fraction | int | float) -> Fraction:
    """`value` as an exact Fraction; a float as the simplest fraction (denominator ≤ SIMPLE_DENOMINATOR)
    that is the same double, else its exact binary value: 0.1 → 1/10, -0.5 → -1/2, and always
    float(as_fraction(x)) == x, so factors computed from it are the floats the number itself gives."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        simple = Fraction(value).limit_denominator(SIMPLE_DENOMINATOR)
        return simple if float(simple) == value else Fraction(value)
    return Fraction(value)


def fraction_text(value: Fraction | float, max_denominator: int = 12) -> str:
    """An exponent for people: "-1/2", "1", "2/3" (the nearest fraction with a small denominator)."""
    f = Fraction(value).limit_denominator(max_denominator)
    return str(f) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


@dataclass(frozen=True)
class Exponents:
    """Scale ∝ (N_u/N_u0)^n_u · (N_x/N_x0)^n_x; exponents are Fractions (ints and floats are converted
    by as_fraction), compare equal to the numbers they are (Exponents(-0.5) == Exponents(Fraction(-1, 2)))."""

    n_u: Fraction = Fraction(0)
    n_x: Fraction = Fraction(0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_u", as_fraction(self.n_u))
        object.__setattr__(self, "n_x", as_fraction(self.n_x))

    @property
    def pair(self) -> Pair:
        """(n_u, n_x)."""
        return self.n_u, self.n_x

    def factor(self, u_ratio: float, x_ratio: float) -> float:
        """(u_ratio)^n_u · (x_ratio)^n_x, with the exponents as the doubles the preset's numbers are."""
        return u_ratio ** float(self.n_u) * x_ratio ** float(self.n_x)

    def __add__(self, other: Exponents) -> Exponents:
        return Exponents(self.n_u + other.n_u, self.n_x + other.n_x)

    def __sub__(self, other: Exponents) -> Exponents:
        return Exponents(self.n_u - other.n_u, self.n_x - other.n_x)

    def __str__(self) -> str:
        parts = [f"{sym}^{fraction_text(e)}" for sym, e in (("N_u", self.n_u), ("N_x", self.n_x)) if e]
        return "·".join(parts) if parts else "1"
