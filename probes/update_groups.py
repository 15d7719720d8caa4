"""The per-group update probes' parameter groups, per model family, as data (torch-free).

A group is a set of roles moved together (all layers) when an observer recomputes the probe batch with only that
group's parameters at their current value and every other at its initial value (Observer.group_update_records,
Mamba2Observer.group_update_records). The solver (runs.analysis.solver, `ssmscope param fit`) shifts a group's
roles together, so these tables are also its learning-rate knobs. Groups carry the same names in both families
(W_B, W_C, dt_path, A_log, upstream): the read-in of the state, its read-out, the Δ path, the decay, and what feeds
the scan input. D, out_proj, the gated norm and the readout are in no group.
"""

from __future__ import annotations

from collections.abc import Mapping

from ssmscope.ssm.roles import Family

UPDATE_GROUPS_BY_FAMILY: dict[Family, dict[str, tuple[str, ...]]] = {
    Family.MAMBA: {  # S6 (ssm.model.MambaLM)
        "W_B": ("x_proj_B",),
        "W_C": ("x_proj_C",),
        "dt_path": ("x_proj_dt", "dt_proj_weight", "dt_proj_bias"),
        "A_log": ("A_log",),
        "upstream": ("embedding", "norm", "in_proj", "conv_weight", "conv_bias"),
    },
    Family.MAMBA2: {  # SSD (ssm.mamba2.Mamba2LM): in_proj's row blocks split between the groups
        "W_B": ("in_proj_B",),
        "W_C": ("in_proj_C",),
        "dt_path": ("in_proj_dt", "dt_bias"),
        "A_log": ("A_log",),
        "upstream": ("embedding", "norm", "in_proj_z", "in_proj_x", "conv_weight", "conv_bias"),
    },
}
"""Family → group → the roles it moves."""

UPDATE_GROUPS: dict[str, tuple[str, ...]] = UPDATE_GROUPS_BY_FAMILY[Family.MAMBA]
"""S6's groups (the table probes.observer.Observer uses)."""


def update_groups(family: Family | str) -> Mapping[str, tuple[str, ...]]:
    """The groups of a model family ("mamba" or "mamba2")."""
    return UPDATE_GROUPS_BY_FAMILY[Family(family)]
