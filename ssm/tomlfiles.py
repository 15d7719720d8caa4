"""Built-in TOML tables shipped in a package folder, or a user's TOML file: one loader for both.

Presets (ssm/presets/), init bases (ssm/presets/bases/) and sweep specs (runs/sweeps/specs/) are
found the same way: a bare name picks a built-in file, anything else must be an existing .toml
path; every failure is a ConfigError.
"""

from __future__ import annotations

import math
import tomllib
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.exponents import as_fraction


def builtin_toml_names(package: str, folder: str) -> list[str]:
    """Names (without .toml) of the TOML files in `package`/`folder`."""
    files = resources.files(package).joinpath(folder)
    return sorted(p.name.removesuffix(".toml") for p in files.iterdir() if p.name.endswith(".toml"))


def read_builtin_or_file(package: str, folder: str, kind: str, name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """(parsed table, source label) for a built-in name or a .toml path; `kind` names it in errors."""
    text = str(name_or_path)
    names = builtin_toml_names(package, folder)
    if text in names:
        return tomllib.loads(resources.files(package).joinpath(folder, f"{text}.toml").read_text("utf-8")), text
    path = Path(text)
    if path.suffix != ".toml":
        raise ConfigError(f"{kind}={text!r}; allowed: {', '.join(names)} or a .toml file")
    if not path.is_file():
        raise ConfigError(f"{kind} file {text!r} does not exist")
    return read_toml(path, kind), text


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """A TOML file's table; a file that is not UTF-8, not TOML or not readable is a one-line ConfigError
    naming it (and, for a bad byte, where it is)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{kind} file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{kind} file {path}: cannot be read ({exc.strerror or exc})") from None


def parse_fraction(path: str, value: Any, limit: float | None = None) -> Fraction:
    """A finite TOML number, or a fraction written as a string ("-1/2"), as an exact Fraction, with
    |value| ≤ `limit` when one is given; `path` names the file and the key in errors. The one reader of
    exponents and fractions in preset and base tables: a float becomes the simplest fraction that is the
    same double (ssm.exponents.as_fraction), so float(result) is the number the file gives. NaN and inf
    are refused: they would train as NaN or overflow."""
    return _read_number(path, value, limit)[0]


def parse_number(path: str, value: Any, limit: float | None = None) -> float:
    """parse_fraction's value as a float (the number as TOML gives it; a fraction string's nearest double)."""
    return _read_number(path, value, limit)[1]


def _read_number(path: str, value: Any, limit: float | None) -> tuple[Fraction, float]:
    """(exact fraction, float) of a TOML number or fraction string; errors as parse_fraction says."""
    exact: Fraction | None = None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if math.isfinite(number):
            exact = as_fraction(value)
    elif isinstance(value, str):
        try:
            exact = Fraction(value.strip())
            number = float(exact)
        except (ValueError, ZeroDivisionError, OverflowError):
            exact = number = None
    if number is None:
        raise ConfigError(f"{path}={value!r}; allowed: a number such as -0.5 or '-1/2'")
    if exact is None or not math.isfinite(number) or (limit is not None and abs(number) > limit):
        bound = f" from {-limit:g} to {limit:g}" if limit is not None else ""
        raise ConfigError(f"{path}={value!r}; allowed: a finite number{bound}")
    return exact, number


def head_table(source: str, table: str, head: Any, keys: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The head table `[table]` of a preset or base TOML, checked: a table, no key outside `keys`, a
    non-empty `name`. Returns (the table, its name); errors are one line naming the file and the key."""
    if not isinstance(head, dict):
        raise ConfigError(f"{source}: missing table [{table}] ({', '.join(keys)})")
    unknown = set(head) - set(keys)
    if unknown:
        raise ConfigError(f"{source}: {table}.{sorted(unknown)[0]}: unknown key; allowed: {', '.join(sorted(keys))}")
    name = head.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: {table}.name={name!r}; allowed: a non-empty string")
    return head, name
