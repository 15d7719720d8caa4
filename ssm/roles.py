"""Parameter roles: an explicit table from parameter names to what each parameter is.

A role says how a parameter is initialised at the base width (its init kind and base
scale) and which width dimensions its fan-in follows; presets (ssm.presets) then scale the
init and the learning rate of each role with N_u and N_x. No default row: a parameter that
no rule covers is reported by `ssmscope param show` and refused by `apply_preset`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from ssmscope.ssm.config import MambaConfig


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
    READOUT = "readout"  # lm_head (untied)


class InitKind(StrEnum):
    NORMAL = "normal"  # N(0, std²), std = base_std · width scaling
    CONSTANT = "constant"  # every entry = base value · width scaling
    STRUCTURAL = "structural"  # Mamba's own formula (S4D-real A, log-uniform Δ); not scaled


@dataclass(frozen=True)
class RoleInit:
    kind: InitKind
    rule: str  # human-readable base rule, shown by `param show`


ROLE_INIT: dict[Role, RoleInit] = {
    Role.EMBEDDING: RoleInit(InitKind.NORMAL, "std 1"),
    Role.IN_PROJ: RoleInit(InitKind.NORMAL, "std d_model0^-1/2 (fan-in)"),
    Role.CONV_WEIGHT: RoleInit(InitKind.NORMAL, "std d_conv^-1/2 (depthwise fan-in)"),
    Role.CONV_BIAS: RoleInit(InitKind.NORMAL, "std d_conv^-1/2"),
    Role.X_PROJ_DT: RoleInit(InitKind.NORMAL, "std N_u0^-1/2 (fan-in)"),
    Role.X_PROJ_B: RoleInit(InitKind.NORMAL, "std N_u0^-1/2 (fan-in)"),
    Role.X_PROJ_C: RoleInit(InitKind.NORMAL, "std N_u0^-1/2 (fan-in)"),
    Role.DT_PROJ_WEIGHT: RoleInit(InitKind.NORMAL, "std R0^-1/2 (fan-in)"),
    Role.DT_PROJ_BIAS: RoleInit(InitKind.STRUCTURAL, "softplus⁻¹(Δ), Δ log-uniform [dt_min, dt_max]"),
    Role.A_LOG: RoleInit(InitKind.STRUCTURAL, "log(n+1) (S4D-real)"),
    Role.D: RoleInit(InitKind.CONSTANT, "1"),
    Role.OUT_PROJ: RoleInit(InitKind.NORMAL, "std N_u0^-1/2 (fan-in)"),
    Role.NORM: RoleInit(InitKind.CONSTANT, "1"),
    Role.READOUT: RoleInit(InitKind.NORMAL, "std d_model0^-1/2 (fan-in)"),
}

# Roles whose module can apply a forward multiplier (the others are not plain linear maps).
MULTIPLIER_ROLES = frozenset(
    {Role.EMBEDDING, Role.IN_PROJ, Role.X_PROJ_DT, Role.X_PROJ_B, Role.X_PROJ_C,
     Role.DT_PROJ_WEIGHT, Role.OUT_PROJ, Role.READOUT}
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
}

_LAYER_PREFIX = re.compile(r"^layers\.(\d+)\.")


def split_name(name: str) -> tuple[int | None, str]:
    """'layers.2.mixer.D' → (2, 'mixer.D'); 'lm_head.weight' → (None, 'lm_head.weight')."""
    m = _LAYER_PREFIX.match(name)
    return (int(m.group(1)), name[m.end():]) if m else (None, name)


def role_of(name: str) -> Role | None:
    """The role of a parameter name, or None when no rule covers it."""
    return ROLE_OF_NAME.get(split_name(name)[1])


def base_std(role: Role, base_cfg: MambaConfig) -> float:
    """Init std (NORMAL) or value (CONSTANT) at the base width, where all presets coincide."""
    fan_in = {
        Role.EMBEDDING: 1,
        Role.IN_PROJ: base_cfg.d_model,
        Role.CONV_WEIGHT: base_cfg.d_conv,
        Role.CONV_BIAS: base_cfg.d_conv,
        Role.X_PROJ_DT: base_cfg.d_inner,
        Role.X_PROJ_B: base_cfg.d_inner,
        Role.X_PROJ_C: base_cfg.d_inner,
        Role.DT_PROJ_WEIGHT: base_cfg.rank,
        Role.OUT_PROJ: base_cfg.d_inner,
        Role.READOUT: base_cfg.d_model,
    }
    if role in (Role.D, Role.NORM):
        return 1.0
    if role in fan_in:
        return 1.0 / math.sqrt(fan_in[role])
    raise KeyError(f"role {role} has a structural init and no base std")
