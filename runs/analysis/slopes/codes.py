"""Dense integer codes for group-bys with numpy bincounts (the slope fit's bookkeeping).

Fitting works on dense integer codes (run, config, probe, step, cell) with numpy bincounts:
group-bys over ten key columns, four of them strings, cost about a second on a million rows.
"""

from __future__ import annotations

import numpy as np


def dense(codes: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Each code's index among the distinct codes (in sorted order), and the distinct codes.

    A bincount over [0, capacity) when that is not much larger than the data, a sort otherwise.
    """
    if capacity <= max(4 * len(codes), 1 << 22):
        present = np.bincount(codes, minlength=capacity) > 0
        return (np.cumsum(present) - 1)[codes], np.flatnonzero(present)
    uniques, inverse = np.unique(codes, return_inverse=True)
    return inverse.reshape(-1), uniques


def combine(parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Mixed-radix code of dense codes (value, radix), ordered like the tuple of parts; and its capacity."""
    code, capacity = np.zeros(len(parts[0][0]), np.int64), 1
    for values, radix in parts:
        if capacity * radix >= 2**62:  # never for real stores; keeps the code exact regardless
            code, uniques = dense(code, capacity)
            capacity = len(uniques)
        code, capacity = code * radix + values, capacity * radix
    return code, capacity


def first_rows(inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """The first row of each group (inverse: group index per row)."""
    first = np.zeros(n_groups, np.int64)
    first[inverse[::-1]] = np.arange(len(inverse) - 1, -1, -1)  # reversed: the first occurrence wins
    return first


def radix(codes: np.ndarray) -> int:
    """The radix of a non-negative dense code array."""
    return int(codes.max()) + 1 if len(codes) else 1


def shifted(values: np.ndarray) -> tuple[np.ndarray, int]:
    """values − min, and the capacity (max − min + 1), for `dense`."""
    if not len(values):
        return values.astype(np.int64), 1
    lo = int(values.min())
    return (values - lo).astype(np.int64), int(values.max()) - lo + 1


def low(values: np.ndarray) -> int:
    """The minimum of a code array (0 when empty)."""
    return int(values.min()) if len(values) else 0


def span(values: np.ndarray) -> int:
    """max − min + 1 of a code array (1 when empty)."""
    return int(values.max()) - int(values.min()) + 1 if len(values) else 1


def distinct_per_group(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """How many distinct codes each group has (groups and codes dense, non-negative)."""
    base = radix(values)
    pairs = dense(group * base + values, n_groups * base)[1]  # the distinct (group, code) pairs
    return np.bincount(pairs // base, minlength=n_groups)
