"""The one long record schema every probe emits (runs/ adds the run's keys and stores it).

One record = one (step, layer, site, quantity, group) cell of a probe-batch tensor v, kept as
raw sums so that every norm convention can be derived later (ssm.predictions.Convention):
  sumsq            Σ v²  over the whole probe-batch tensor
  count            number of elements
  maxabs           max |v| (overflow detection)
  token_norm_sum   Σ over tokens (b, t) of ‖v_{b,t}‖₂      with n_tokens tokens
  channel_norm_sum Σ over (b, t, i) of ‖v_{b,t,i,:}‖₂     with n_channels channel vectors
                   (for the state x: the per-channel state over N; for others: |v_{b,t,i}|)
Derived: rms = sqrt(sumsq/count), l2 = sqrt(sumsq), token_l2 = token_norm_sum/n_tokens,
channel_l2 = channel_norm_sum/n_channels.
"""

from __future__ import annotations

from enum import StrEnum

SCHEMA_VERSION = 1


class Site(StrEnum):
    X = "x"  # latent state x_t (B, L, ED, N), from inside the scan (Mamba-2: the SSD state h_t, (B, L, H·P, N))
    Y = "y"  # S6 output C·x + D⊙u (B, L, ED), before the gate (Mamba-2: the SSD output h·C + D_h·x)
    CX = "cx"  # the state readout C·x alone (B, L, ED) (Mamba-2: h·C = y − D_h·x)
    BLOCK_OUT = "block_out"  # Mamba block output after out_proj (B, L, D)
    GRAD_Y = "grad_y"  # ∂L/∂y (B, L, ED)
    GRAD_X = "grad_x"  # adjoint ∂L/∂x_t (B, L, ED, N) (Mamba-2: ∂L/∂h_t)
    PARAM = "param"  # a parameter tensor (group = its role)
    LOGITS = "logits"  # the readout's output (B, L, vocab): its value and change on the probe batch (readout probes)
    READOUT_GRAD = "readout_grad"  # ∂L/∂W of the embedding and readout matrices on the probe batch, split by use
    # (group: "input" = the embedding lookup's share, "readout" = the readout's share, "shared" = their sum when
    # the two are one tied matrix); readout probes only
    IN_PROJ = "in_proj"  # Mamba-2 only: one row block of in_proj's output (B, L, rows) on the probe batch, group = the
    # block (z, x, B, C, dt); value and Δ since init / the previous logged step: which slices a µP recipe moves


class Quantity(StrEnum):
    VALUE = "value"  # the tensor itself at this step
    DELTA_INIT = "delta_init"  # change from initialisation on the same probe batch
    DELTA_PREV = "delta_prev"  # change from the previous logged step


# column → arrow/duckdb type name; `group` is "" unless the record is per parameter group
PROBE_COLUMNS: dict[str, str] = {
    "step": "int64",
    "layer": "int32",
    "site": "string",
    "quantity": "string",
    "group": "string",
    "sumsq": "float64",
    "count": "int64",
    "maxabs": "float64",
    "token_norm_sum": "float64",
    "n_tokens": "int64",
    "channel_norm_sum": "float64",
    "n_channels": "int64",
}
