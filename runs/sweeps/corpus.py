"""Training data available offline, deterministic from a seed.

- "pydoc": the English text of Python's bundled documentation (pydoc_data.topics, ~0.5 MB)
  as UTF-8 bytes (vocabulary 256); the first 90 % is the training split, the rest held out.
- "copy": a synthetic task: random bytes whose second half repeats the first half.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

HELD_OUT_FRACTION = 0.1
SPLITS = ("train", "held_out")


def train_batch_seed(run_seed: int, step: int) -> int:
    """Seed of the training batch a run draws at `step` (when it does not train on a fixed batch)."""
    return run_seed * 100_003 + step


def eval_batch_seed(run_seed: int, index: int) -> int:
    """Seed of the `index`-th held-out batch of a run's evaluation."""
    return run_seed * 1000 + index


def _generator_seed(seed: int, split: str) -> int:
    """Seed of the generator behind `batch`: the two splits never share a stream."""
    return seed * 2 + SPLITS.index(split)


@functools.cache
def pydoc_bytes() -> bytes:
    """The corpus: every pydoc topic, in sorted topic order, joined by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


def _split(split: str) -> Tensor:
    data = torch.frombuffer(bytearray(pydoc_bytes()), dtype=torch.uint8)
    cut = int(len(data) * (1 - HELD_OUT_FRACTION))
    return (data[:cut] if split == "train" else data[cut:]).long()


def batch(task: str, split: str, batch_size: int, seq_len: int, seed: int) -> Tensor:
    """Token ids (batch_size, seq_len + 1): inputs are [:, :-1], targets [:, 1:]."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {', '.join(SPLITS)}")
    g = torch.Generator().manual_seed(_generator_seed(seed, split))
    if task == "pydoc":
        data = _split(split)
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        return torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
    if task == "copy":
        half = (seq_len + 2) // 2
        first = torch.randint(0, 256, (batch_size, half), generator=g)
        return torch.cat([first, first], dim=1)[:, : seq_len + 1]
    raise ValueError(f"task={task!r}; allowed: pydoc, copy")
