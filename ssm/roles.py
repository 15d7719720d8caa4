"""Parameter roles: an explicit table from parameter names to what each parameter is.

A role groups the parameters that share one init rule and one width scaling: an init base
(ssm.bases) says how each role is drawn at the base width, a preset (ssm.presets) how its init,
learning rate and multiplier scale with N_u and N_x. This module holds what is fixed by the
architecture: the names, the fan-ins and which roles have a structural init. No default row: a
parameter that no rule covers is reported by `ssmscope param show` and refused by `apply_preset`.

Roles belong to a model family (`Family`): Mamba-1's S6 (`mamba`) and Mamba-2's SSD (`mamba2`) share the
embedding, conv1d, A_log, D, out_proj, norms and readout, and each has its own projections (S6: in_proj, the
three x_proj blocks, dt_proj; SSD: in_proj's five row blocks, dt_bias, the gated norm). A preset or base names
its family and gives a rule for exactly that family's roles (ROLES_OF_FAMILY).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ssmscope.ssm.errors import ConfigError


class Family(StrEnum):
    """A kind of Mamba whose parameters have roles: S6 (Mamba-1) or SSD (Mamba-2)."""

    MAMBA = "mamba"
    MAMBA2 = "mamba2"


class Role(StrEnum):
    EMBEDDING = "embedding"
    IN_PROJ = "in_proj"
    CONV_WEIGHT = "conv_weight"
    CONV_BIAS = "conv_bias"
    X_PROJ_DT = "x_proj_dt"  # W_xδ: u → dt_low (R × N_u)
    X_PROJ_B = "x_proj_B"  # W_B: u → B (N_x × N_u)
    X_PROJ_C = "x_proj_C"  # W_C: u → C (N_x × N_u)
    DT_PROJ_WEIGHT = "dt_proj_weight"  # W_Δ: dt_low → Δ pre-activation (N_u × R)
    DT_PROJ_BIAS = "dt_proj_bias"  # b_Δ
    A_LOG = "A_log"
    D = "D"
    OUT_PROJ = "out_proj"
    NORM = "norm"  # RMSNorm gains (per block and final)
    READOUT = "readout"  # lm_head (its own matrix, or the embedding's when tied)
    # Mamba-2 (SSD): in_proj's row blocks, each a map from d_model (fan-out in brackets)
    IN_PROJ_Z = "in_proj_z"  # the gate z (d_inner)
    IN_PROJ_X = "in_proj_x"  # the scan input x, before the conv (d_inner)
    IN_PROJ_B = "in_proj_B"  # B (ngroups·d_state): fan-out fixed unless N_x scales
    IN_PROJ_C = "in_proj_C"  # C (ngroups·d_state)
    IN_PROJ_DT = "in_proj_dt"  # Δ's pre-activation, one per head (nheads)
    DT_BIAS = "dt_bias"  # b_Δ per head
    GATED_NORM = "gated_norm"  # the gated RMSNorm's gain (d_inner)


ROLES_OF_FAMILY: dict[Family, tuple[Role, ...]] = {
    Family.MAMBA: (Role.EMBEDDING, Role.IN_PROJ, Role.CONV_WEIGHT, Role.CONV_BIAS, Role.X_PROJ_DT, Role.X_PROJ_B,
                   Role.X_PROJ_C, Role.DT_PROJ_WEIGHT, Role.DT_PROJ_BIAS, Role.A_LOG, Role.D, Role.OUT_PROJ,
                   Role.NORM, Role.READOUT),
    Family.MAMBA2: (Role.EMBEDDING, Role.IN_PROJ_Z, Role.IN_PROJ_X, Role.IN_PROJ_B, Role.IN_PROJ_C,
                    Role.IN_PROJ_DT, Role.CONV_WEIGHT, Role.CONV_BIAS, Role.DT_BIAS, Role.A_LOG, Role.D,
                    Role.GATED_NORM, Role.OUT_PROJ, Role.NORM, Role.READOUT),
}
"""The roles of each family, in the order `param show` lists them."""


class InitKind(StrEnum):
    """How a parameter is initialised: a base's distribution for the role, or `tied`."""

    NORMAL = "normal"  # N(0, std²)
    UNIFORM = "uniform"  # U(±√3·std): kaiming-uniform's U(±fan_in^-1/2) has std (3·fan_in)^-1/2
    CONSTANT = "constant"  # every entry = value
    STRUCTURAL = "structural"  # a named formula (STRUCTURAL_RULES); not scaled with width
    TIED = "tied"  # the readout is the embedding's matrix (one parameter, two uses)


# The roles whose init is a formula rather than a scale, and the formulas each may use
# (ssm.apply._structural_init implements them; a base names one per role).
STRUCTURAL_RULES: dict[Role, tuple[str, ...]] = {
    Role.DT_PROJ_BIAS: ("inverse_softplus_log_uniform_dt",),  # softplus⁻¹(Δ), Δ log-uniform in [dt_min, dt_max]
    Role.DT_BIAS: ("inverse_softplus_log_uniform_dt",),  # the same per Mamba-2 head
    Role.A_LOG: (
        "s4d_real",  # S6: A_log = log(n + 1), A[i, n] = −(n + 1)
        "log_uniform_a",  # SSD, state-spaces/mamba: A ~ U(a_init_range) per head, A_log = log A
        "log_arange_heads",  # SSD, transformers: A_log = log(1 … nheads), width-dependent
    ),
}


@dataclass(frozen=True)
class FanIn:
    """A role's fan-in: the MambaConfig attribute holding it and how it scales with N_u and N_x."""

    attr: str
    n_u: float
    n_x: float = 0.0


# Fan-in of each matrix role (PyTorch's convention: inputs per output, depthwise conv: d_conv).
# x_proj's three row blocks share the full x_proj's fan-in d_inner. Roles without an entry
# (embedding: one-hot input; vectors) have no fan-in, and a base cannot scale them by one.
FAN_IN: dict[Role, FanIn] = {
    Role.IN_PROJ: FanIn("d_model", 1),
    Role.CONV_WEIGHT: FanIn("d_conv", 0),
    Role.CONV_BIAS: FanIn("d_conv", 0),  # PyTorch draws a bias with its weight's fan-in
    Role.X_PROJ_DT: FanIn("d_inner", 1),
    Role.X_PROJ_B: FanIn("d_inner", 1),
    Role.X_PROJ_C: FanIn("d_inner", 1),
    Role.DT_PROJ_WEIGHT: FanIn("rank", 1),  # R = ceil(d_model/16)
    Role.OUT_PROJ: FanIn("d_inner", 1),
    Role.READOUT: FanIn("d_model", 1),
    Role.IN_PROJ_Z: FanIn("d_model", 1),
    Role.IN_PROJ_X: FanIn("d_model", 1),
    Role.IN_PROJ_B: FanIn("d_model", 1),
    Role.IN_PROJ_C: FanIn("d_model", 1),
    Role.IN_PROJ_DT: FanIn("d_model", 1),
}

# Roles whose module can apply a forward multiplier (the others are not plain linear maps).
MULTIPLIER_ROLES = frozenset(
    {Role.EMBEDDING, Role.IN_PROJ, Role.X_PROJ_DT, Role.X_PROJ_B, Role.X_PROJ_C,
     Role.DT_PROJ_WEIGHT, Role.OUT_PROJ, Role.READOUT, Role.IN_PROJ_Z, Role.IN_PROJ_X, Role.IN_PROJ_B,
     Role.IN_PROJ_C, Role.IN_PROJ_DT}
)

# Parameter name (with "layers.<k>." removed) → role. The one place names meet roles.
ROLE_OF_NAME: dict[str, Role] = {
    "embedding.weight": Role.EMBEDDING,
    "norm.weight": Role.NORM,
    "mixer.in_proj.weight": Role.IN_PROJ,
    "mixer.conv1d.weight": Role.CONV_WEIGHT,
    "mixer.conv1d.bias": Role.CONV_BIAS,
    "mixer.x_proj.dt.weight": Role.X_PROJ_DT,
    "mixer.x_proj.B.weight": Role.X_PROJ_B,
    "mixer.x_proj.C.weight": Role.X_PROJ_C,
    "mixer.dt_proj.weight": Role.DT_PROJ_WEIGHT,
    "mixer.dt_proj.bias": Role.DT_PROJ_BIAS,
    "mixer.A_log": Role.A_LOG,
    "mixer.D": Role.D,
    "mixer.out_proj.weight": Role.OUT_PROJ,
    "norm_f.weight": Role.NORM,
    "lm_head.weight": Role.READOUT,
    # Mamba-2 (ssm.mamba2); conv1d, A_log, D, out_proj and the norms have the names above
    "mixer.in_proj.z.weight": Role.IN_PROJ_Z,
    "mixer.in_proj.x.weight": Role.IN_PROJ_X,
    "mixer.in_proj.B.weight": Role.IN_PROJ_B,
    "mixer.in_proj.C.weight": Role.IN_PROJ_C,
    "mixer.in_proj.dt.weight": Role.IN_PROJ_DT,
    "mixer.dt_bias": Role.DT_BIAS,
    "mixer.norm.weight": Role.GATED_NORM,
}

# Module owning each multiplier-capable role, relative to the layer (or the LM for the ends).
MODULE_OF_ROLE: dict[Role, str] = {
    Role.EMBEDDING: "embedding",
    Role.IN_PROJ: "mixer.in_proj",
    Role.X_PROJ_DT: "mixer.x_proj.dt",
    Role.X_PROJ_B: "mixer.x_proj.B",
    Role.X_PROJ_C: "mixer.x_proj.C",
    Role.DT_PROJ_WEIGHT: "mixer.dt_proj",
    Role.OUT_PROJ: "mixer.out_proj",
    Role.READOUT: "lm_head",
    Role.IN_PROJ_Z: "mixer.in_proj.z",
    Role.IN_PROJ_X: "mixer.in_proj.x",
    Role.IN_PROJ_B: "mixer.in_proj.B",
    Role.IN_PROJ_C: "mixer.in_proj.C",
    Role.IN_PROJ_DT: "mixer.in_proj.dt",
}

_LAYER_PREFIX = re.compile(r"^layers\.(\d+)\.")


def split_name(name: str) -> tuple[int | None, str]:
    """'layers.2.mixer.D' → (2, 'mixer.D'); 'lm_head.weight' → (None, 'lm_head.weight')."""
    m = _LAYER_PREFIX.match(name)
    return (int(m.group(1)), name[m.end():]) if m else (None, name)


def role_of(name: str) -> Role | None:
    """The role of a parameter name, or None when no rule covers it."""
    return ROLE_OF_NAME.get(split_name(name)[1])


def family_of(source: str, table: dict[str, Any], head: str) -> Family:
    """The family a preset's or base's head table names (`family = "mamba2"`; default `mamba`), one-line errors."""
    value = table.get("family", Family.MAMBA.value)
    if value not in Family._value2member_map_:
        raise ConfigError(f"{source}: {head}.family={value!r}; allowed: {', '.join(f.value for f in Family)}")
    return Family(value)


def role_table(source: str, data: dict[str, Any], what: str, family: Family = Family.MAMBA) -> dict[str, Any]:
    """The `[roles]` table of a preset or base TOML, checked to name every role of `family` exactly once.

    `what` ends the message for a missing role ("every role needs a rule"). Errors are one line naming
    the file and the key, e.g. "sp.toml: roles.x_proj_Q: unknown role; allowed: …"."""
    roles = data.get("roles")
    if not isinstance(roles, dict):
        raise ConfigError(f"{source}: missing table [roles]")
    own = ROLES_OF_FAMILY[family]
    allowed = ", ".join(r.value for r in own)
    for key in roles:
        if key not in Role._value2member_map_ or Role(key) not in own:
            raise ConfigError(f"{source}: roles.{key}: unknown role for family {family}; allowed: {allowed}")
    missing = [r.value for r in own if r.value not in roles]
    if missing:
        raise ConfigError(f"{source}: roles.{missing[0]}: missing; {what} (roles: {allowed})")
    return roles
