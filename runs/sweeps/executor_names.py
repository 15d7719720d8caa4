"""The executors' names and the Slurm cluster kinds, as enums: standard library only, so the CLI can offer them as
choices without importing an executor."""

from __future__ import annotations

from enum import StrEnum


class ExecutorName(StrEnum):
    """Where runs execute (`--executor`)."""

    LOCAL = "local"
    RAY = "ray"
    SLURM = "slurm"


class SlurmCluster(StrEnum):
    """What `--executor slurm` submits to (`--cluster`): sbatch, or submitit's local jobs (to try a setup)."""

    SLURM = "slurm"
    LOCAL = "local"
