"""How much memory one run needs, roughly, and how much this machine has: widths are checked before training.

The estimate counts what grows with the run's shape (fp32, 4 bytes a value):
  * parameters P, each with its gradient, two Adam moments and the copy the probes compare
    against: 5·P values;
  * per layer, the activations kept for backward and the probes' (B, L, N_u) records:
    ACTIVATIONS_PER_LAYER·B·L·N_u values;
  * per layer, the scan's saved states, 5·min(B·L·N_u·N_x, max(SCAN_SAVE_VALUES, B·N_u·N_x)):
    the fast scan keeps whole state sequences only up to its save budget (ssm.scan.fast) and
    recomputes chunks beyond it, but at least one time step's states exist at once;
  * the logits, 4·B·L·vocab values; plus RUNTIME_BYTES for torch itself.
Calibrated on the CPU peak RSS (`ru_maxrss`; torch 2.13, fast scan, 1 thread) of 1- and 2-step
mup-ssm runs, (N_u, N_x, B, L, layers) → measured / estimated MiB: (128, 128, 2, 16, 3) 604 / 637,
(512, 512, 2, 16, 3) 1289 / 1157, (512, 512, 4, 32, 3) 1347 / 1177, (256, 256, 8, 64, 3) 998 / 1147,
(1024, 4, 8, 128, 1) 812 / 849, (1024, 4, 8, 128, 3) 1317 / 1331.
It is a guard against widths that cannot fit (10^9 asks for exabytes), not a prediction to the percent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ssmscope.runs.sweeps.spec import RunConfig

BYTES_PER_VALUE = 4
RUNTIME_BYTES = 600 * 2**20
"""torch, the corpus and the allocator's slack (a 3-layer width-128 run peaks at 604 MiB RSS on the CPU)."""
STATE_COPIES = 5
"""Per parameter: value, gradient, two Adam moments, the probes' initial copy."""
ACTIVATIONS_PER_LAYER = 32
"""(B, L, N_u)-sized tensors alive per layer at the peak (measured: 252 MB per layer at B·L·N_u = 2^20)."""
SCAN_SAVE_VALUES = 64 * 2**20 // (2 * BYTES_PER_VALUE)
"""States the fast scan saves whole before it chunks (its SAVE_BUDGET_BYTES, 64 MiB, over states and coefficients)."""
SCAN_COPIES = 5
CONV_WIDTH = 4
VOCAB = 256


def mamba_parameter_count(*, d_model: int, n_u: int, n_x: int, n_layers: int, vocab: int = VOCAB) -> int:
    """Parameters of a Mamba LM (embedding, head, and per layer the mixer's projections and norms)."""
    d, ed, n = d_model, n_u, n_x
    rank = max(1, -(-d // 16))
    per_layer = (d * 2 * ed + ed * (CONV_WIDTH + 1) + ed * (rank + 2 * n) + rank * ed + ed + ed * n + ed
                 + ed * d + d)
    return 2 * vocab * d + d + n_layers * per_layer


def parameter_count(cfg: RunConfig) -> int:
    """Parameters of the run's MambaLM."""
    return mamba_parameter_count(d_model=cfg.d_model, n_u=cfg.n_u, n_x=cfg.n_x, n_layers=cfg.n_layers)


def mamba_run_bytes(*, d_model: int, n_u: int, n_x: int, n_layers: int, batch: int, seq_len: int,
                    vocab: int = VOCAB) -> int:
    """The estimated peak memory of training and probing one Mamba LM of this shape, in bytes (module docstring).

    Shared by the sweep's preflight (run_bytes) and the notebook API's coord_check, which trains the same way."""
    b, length, ed, n = batch, seq_len, n_u, n_x
    states = min(b * length * ed * n, max(SCAN_SAVE_VALUES, b * ed * n))
    per_layer = ACTIVATIONS_PER_LAYER * b * length * ed + SCAN_COPIES * states
    params = mamba_parameter_count(d_model=d_model, n_u=n_u, n_x=n_x, n_layers=n_layers, vocab=vocab)
    values = STATE_COPIES * params + n_layers * per_layer + 4 * b * length * vocab
    return RUNTIME_BYTES + BYTES_PER_VALUE * values


def run_bytes(cfg: RunConfig) -> int:
    """The estimated peak memory of one run of a sweep, in bytes (see the module docstring)."""
    return mamba_run_bytes(d_model=cfg.d_model, n_u=cfg.n_u, n_x=cfg.n_x, n_layers=cfg.n_layers, batch=cfg.batch,
                           seq_len=cfg.seq_len)


def available_ram() -> tuple[int, str]:
    """(bytes this machine can give now, where that number comes from)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
    except (ValueError, OSError, AttributeError):
        return 0, "unknown"


def gpu_memory() -> tuple[int, str]:
    """(bytes of the smallest visible GPU, its description); (0, ...) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return 0, "no CUDA device"
    sizes = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return min(sizes), f"the smallest of {len(sizes)} visible GPU(s)"


SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int | None:
    """'16G', '512M', '1.5T', '1000000' (bytes; KiB/K/KB alike, powers of 1024) → bytes; 'none' → None (no
    limit). ValueError for anything else."""
    t = text.strip().lower()
    if t in ("none", "off"):
        return None
    found = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", t)
    if not found or float(found[1]) <= 0:
        raise ValueError(text)
    return int(float(found[1]) * SIZE_UNITS[found[2]])


def human(n: float) -> str:
    """Bytes as KiB … EiB with three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"
