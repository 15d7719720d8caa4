"""Built-in TOML tables shipped in a package folder, or a user's TOML file: one loader for both.

Presets (ssm/presets/), init bases (ssm/presets/bases/) and sweep specs (runs/sweeps/specs/) are
found the same way: a bare name picks a built-in file, anything else must be an existing .toml
path; every failure is a ConfigError.
"""

from __future__ import annotations

import tomllib
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from ssmscope.ssm.errors import ConfigError


def builtin_toml_names(package: str, folder: str) -> list[str]:
    """Names (without .toml) of the TOML files in `package`/`folder`."""
    files = resources.files(package).joinpath(folder)
    return sorted(p.name.removesuffix(".toml") for p in files.iterdir() if p.name.endswith(".toml"))


def read_builtin_or_file(package: str, folder: str, kind: str, name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """(parsed table, source label) for a built-in name or a .toml path; `kind` names it in errors."""
    text = str(name_or_path)
    names = builtin_toml_names(package, folder)
    if text in names:
        return tomllib.loads(resources.files(package).joinpath(folder, f"{text}.toml").read_text()), text
    path = Path(text)
    if path.suffix != ".toml":
        raise ConfigError(f"{kind}={text!r}; allowed: {', '.join(names)} or a .toml file")
    if not path.is_file():
        raise ConfigError(f"{kind} file {text!r} does not exist")
    try:
        return tomllib.loads(path.read_text()), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{text}: not valid TOML ({exc})") from None


def parse_number(path: str, value: Any) -> float:
    """A TOML number, or a fraction written as a string ("-1/2"); `path` names the key in errors."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}={value!r}; allowed: a number such as -0.5 or '-1/2'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{path}={value!r}; allowed: a number such as -0.5 or '-1/2'")


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
