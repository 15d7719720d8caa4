"""The allowed range of every numeric command-line option, as one table, and the memory check.

A number outside its range (or NaN, or infinite) is a user mistake: one line naming the option, the
value and the range, exit code 2 — never hours of work, an OOM kill or a silently accepted NaN. The
ranges are generous (far past any real use) but finite; docs/specs.md lists them. Where the memory a
command needs grows with a value (the bootstrap's resamples), `check_memory` compares an estimate with
what this machine has and refuses with a line naming both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ssmscope.ssm.errors import ConfigError

INT64_MAX = 2**63 - 1
"""Largest seed numpy, torch and the store's BIGINT columns all take."""


@dataclass(frozen=True)
class Bound:
    """low ≤ value ≤ high (low < value when `above_low`), in `unit`."""

    low: float
    high: float
    unit: str = ""
    above_low: bool = False

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return (value > self.low if self.above_low else value >= self.low) and value <= self.high

    def describe(self, integer: bool = False) -> str:
        """The range in words: 'an integer from 0 to 100000 resamples', 'a finite number from ... to ...'."""
        low = f"more than {self.low:g}" if self.above_low else f"{self.low:g}"
        high = f"{self.high:g}" if self.high < 1e15 else f"{int(self.high)}"
        kind = "an integer" if integer else "a finite number"
        return f"{kind} from {low} to {high}{f' {self.unit}' if self.unit else ''}"


DAY_S = 86_400
BOUNDS: dict[str, Bound] = {
    # slopes, transfer, param fit
    "--n-boot": Bound(0, 100_000, "resamples"),
    "--seed": Bound(0, INT64_MAX),
    # sweep, param fit
    "--workers": Bound(1, 1024, "worker processes"),
    "--retries": Bound(0, 100, "retries"),
    "--ingest-every": Bound(0, 1_000_000, "runs"),
    "--ingest-interval": Bound(0, DAY_S, "seconds"),
    "--time-min": Bound(1, 30 * 24 * 60, "minutes"),
    "--cpus-per-task": Bound(0, 1024, "CPUs", above_low=True),
    "--gpus-per-task": Bound(0, 64, "GPUs"),
    "--array-parallelism": Bound(1, 1_000_000, "array tasks"),
    "--tolerance": Bound(0, 2, above_low=True),
    "--max-iter": Bound(0, 20, "re-sweeps"),
    # ingest
    "--wait": Bound(0, DAY_S, "seconds"),
    "--older-than": Bound(0, 365 * 24 * 60, "minutes"),
    # app
    "--port": Bound(1, 65_535),
    # param show (a model on the meta device: shapes, no memory)
    "--d-model": Bound(1, 2**16),
    "--d-state": Bound(1, 2**16),
    "--expand": Bound(1, 64),
    "--headdim": Bound(1, 2**16),
    "--n-layers": Bound(1, 256),
    "--vocab-size": Bound(1, 2**24),
    "--lr": Bound(0, 1e6, above_low=True),
}
"""Option → its allowed range. Every numeric option of every `ssmscope` command is here."""


def check_option(option: str, value: float | None) -> None:
    """Raise a one-line ConfigError unless `value` (None: not given) is in the range of `option`."""
    if value is None:
        return
    bound = BOUNDS[option]
    if not bound.allows(value):
        raise ConfigError(f"{option}={value}; allowed: {bound.describe(isinstance(value, int))}")


def check_options(values: dict[str, float | None]) -> None:
    """check_option for each (option, value), in order: the first one out of range is the error."""
    for option, value in values.items():
        check_option(option, value)


def check_memory(what: str, need: int, fix: str) -> None:
    """Raise a one-line ConfigError when `need` bytes (for `what`) exceed what this machine has now."""
    from ssmscope.runs.sweeps.memory import available_ram, human

    limit, source = available_ram()
    if limit and need > limit:
        raise ConfigError(f"{what} needs about {human(need)}, more than the {human(limit)} this machine has "
                          f"({source}); {fix}")
