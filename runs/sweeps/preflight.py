"""Checks before any run trains: the device exists, every preset loads, every run fits in memory.

Each problem is one ConfigError (the CLI prints one line, exit 2), so a sweep never trains for an
hour to fail on something knowable at its start. The device and the machine's memory are checked
for the local executor, whose workers run here; Ray and Slurm run elsewhere, so for them only an
explicit `--max-memory` applies.
"""

from __future__ import annotations

import importlib.util
import math
import os

from ssmscope.runs.sweeps.memory import available_ram, gpu_memory, human, run_bytes
from ssmscope.runs.sweeps.spec import SweepSpec
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import builtin_names, load_preset

AUTO = "auto"
"""max_memory: the limit of this machine (local executor), none elsewhere."""


def check_device(device: str, executor: str) -> None:
    """`--device cuda` (or cuda:N) needs that CUDA device here when the runs execute here."""
    if executor != "local" or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is visible here (torch {torch.__version__}: "
                          "torch.cuda.is_available() is False); use --device cpu, or auto (a GPU when there is one)")
    count = torch.cuda.device_count()
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= count):
        raise ConfigError(f"--device {device}: {count} CUDA device(s) visible here; allowed: cuda, "
                          + ", ".join(f"cuda:{i}" for i in range(count)))


def check_scan(scan: str, device: str, executor: str) -> None:
    """`--scan triton` runs on CUDA tensors only: refuse it before any run when the runs would be on a CPU (every
    run would fail), or the triton package is missing here. TRITON_INTERPRET=1 runs it on the CPU (tests)."""
    if scan != "triton" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return
    if device == "cpu":
        raise ConfigError("--scan triton needs a CUDA device and --device cpu runs on the CPU; "
                          "use --scan fast or compiled (or auto)")
    if executor != "local":  # the workers' machines decide; a run that cannot use it fails there
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--scan triton needs a CUDA device; none is visible here (torch {torch.__version__}: "
                          "torch.cuda.is_available() is False); use --scan fast or compiled (or auto)")
    if importlib.util.find_spec("triton") is None:
        raise ConfigError("--scan triton: the triton package is not installed here (pip install triton); "
                          "use --scan fast or auto")


def check_presets(spec: SweepSpec) -> None:
    """Every preset file of the grid exists and parses (built-in presets are checked by their tests)."""
    for name in dict.fromkeys(cfg.preset for cfg in spec.runs):
        if name in builtin_names():
            continue
        try:
            load_preset(name)
        except ConfigError as exc:  # a bad encoding, TOML, key or exponent (ssm.tomlfiles, ssm.presets)
            raise ConfigError(f"grid.presets: {exc}") from None


def memory_limit(device: str, executor: str, workers: int | None) -> tuple[int, str] | None:
    """(bytes one run may use, where that number comes from) on this machine; None when runs execute elsewhere."""
    if executor != "local":
        return None
    gpus = 0
    if device.startswith("cuda") or device == AUTO:
        total, source = gpu_memory()
        if total:
            import torch

            gpus = torch.cuda.device_count()
            sharing = math.ceil((workers or gpus) / gpus)
            return total // sharing, source + (f", shared by {sharing} workers" if sharing > 1 else "")
    ram, source = available_ram()
    if not ram:
        return None
    n = workers or 1
    return ram // n, source + (f", shared by {n} workers" if n > 1 else "")


def check_memory(spec: SweepSpec, device: str, executor: str, workers: int | None,
                 max_memory: int | str | None = AUTO) -> None:
    """The largest run's estimated peak (runs.sweeps.memory) must fit the limit: `max_memory` bytes,
    this machine's (AUTO), or none (None)."""
    if max_memory is None:
        return
    if max_memory == AUTO:
        found = memory_limit(device, executor, workers)
        if found is None:
            return
        limit, source = found
    else:
        limit, source = int(max_memory), "--max-memory"
    worst = max(spec.runs, key=run_bytes)
    need = run_bytes(worst)
    if need > limit:
        raise ConfigError(
            f"grid: the run N_u={worst.n_u}, N_x={worst.n_x} (batch {worst.batch}, seq_len {worst.seq_len}, "
            f"{worst.n_layers} layers) needs about {human(need)}, more than the {human(limit)} a run may use "
            f"({source}); use smaller widths, fewer --workers, or override with --max-memory SIZE (or none)")


def check_plan(spec: SweepSpec, device: str, executor: str, workers: int | None,
               max_memory: int | str | None = AUTO, scan: str = "auto") -> None:
    """Every check above, in order (presets, device, scan, memory): a ConfigError for the first problem."""
    check_presets(spec)
    check_device(device, executor)
    check_scan(scan, device, executor)
    check_memory(spec, device, executor, workers, max_memory)
