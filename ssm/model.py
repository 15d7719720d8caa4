"""Mamba language model with an observable S6 (semantics of state-spaces/mamba's reference).

Block: RMSNorm → in_proj → (x, z); x → causal depthwise conv1d → SiLU → S6 → y;
y ⊙ SiLU(z) → out_proj; residual add. LM: embedding → blocks → RMSNorm → readout, which may be
tied to the embedding (one matrix, two uses, as in Mamba and transformers; set_readout_tied).
Parameter names follow state-spaces/mamba (in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj) except that x_proj holds its three row blocks as separate weights (x_proj.dt,
x_proj.B, x_proj.C), so that each can carry its own init and learning-rate scale.
Initialisation is not done here: ssm.apply.apply_preset sets every parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmscope.ssm.config import MambaConfig
from ssmscope.ssm.scan import StateProbe, selective_scan


class ScaledLinear(nn.Linear):
    """nn.Linear with a forward multiplier (µP-style output scaling), 1 unless a preset sets it."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.multiplier = 1.0

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out if self.multiplier == 1.0 else out * self.multiplier


class ScaledEmbedding(nn.Embedding):
    """nn.Embedding with a forward multiplier."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.multiplier = 1.0

    def forward(self, ids: Tensor) -> Tensor:
        out = super().forward(ids)
        return out if self.multiplier == 1.0 else out * self.multiplier


class RMSNorm(nn.Module):
    """y = x / rms(x) · weight (Mamba's norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SelectionProjection(nn.Module):
    """Mamba's x_proj, split by rows: u → (dt_low (R), B (N), C (N)), all without bias."""

    def __init__(self, d_inner: int, rank: int, d_state: int):
        super().__init__()
        self.dt = ScaledLinear(d_inner, rank)
        self.B = ScaledLinear(d_inner, d_state)
        self.C = ScaledLinear(d_inner, d_state)

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.dt(u), self.B(u), self.C(u)


class MambaMixer(nn.Module):
    """One Mamba block's mixer: in_proj, conv, S6, gate, out_proj. (B, L, D) → (B, L, D).

    `probe` (set by an observer, never by the model) receives the latent-state statistics of
    the next forward's scan; `last_y` (set only when `keep_y` is on) keeps the S6 output.
    """

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        ed, n, r, w = cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
        self.in_proj = ScaledLinear(cfg.d_model, 2 * ed)
        self.conv1d = nn.Conv1d(ed, ed, kernel_size=w, groups=ed, padding=w - 1, bias=True)
        self.x_proj = SelectionProjection(ed, r, n)
        self.dt_proj = ScaledLinear(r, ed, bias=True)
        self.A_log = nn.Parameter(torch.empty(ed, n))
        self.D = nn.Parameter(torch.empty(ed))
        self.out_proj = ScaledLinear(ed, cfg.d_model)
        self.ssm_output = nn.Identity()  # hook point: the S6 output y (before gating)
        self.ssm_input = nn.Identity()  # hook point: the S6 input u (after conv + SiLU)
        self.probe: StateProbe | None = None

    def forward(self, h: Tensor) -> Tensor:
        L = h.shape[1]
        xz = self.in_proj(h)  # (B, L, 2·ED)
        x, z = xz.chunk(2, dim=-1)  # (B, L, ED) each
        x = self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2)  # causal: (B, L, ED)
        u = self.ssm_input(F.silu(x))  # (B, L, ED)
        dt_low, B, C = self.x_proj(u)  # (B, L, R), (B, L, N), (B, L, N)
        dt = F.linear(dt_low, self.dt_proj.weight) * self.dt_proj.multiplier  # (B, L, ED)
        A = -torch.exp(self.A_log)  # (ED, N), S4D-real: A[i, n] = −(n + 1) at init
        y = selective_scan(
            u, dt, A, B, C, self.D, self.dt_proj.bias,
            discretization=self.cfg.discretization, backend=self.cfg.scan, probe=self.probe,
        )  # (B, L, ED); Δ = softplus(dt + dt_bias) inside the scan
        y = self.ssm_output(y)
        return self.out_proj(y * F.silu(z))  # (B, L, D)


class MambaBlock(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h))."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.mixer(self.norm(h))


class TiedReadout:
    """The readout of an LM with `embedding` and `lm_head`: tied (one matrix, two uses) or its own."""

    embedding: ScaledEmbedding
    lm_head: ScaledLinear

    @property
    def readout_tied(self) -> bool:
        """Whether lm_head.weight is embedding.weight."""
        return self.lm_head.weight is self.embedding.weight

    def set_readout_tied(self, tied: bool) -> None:
        """Share the embedding matrix as the readout, or give the readout its own (uninitialised) one.

        Tied, the one parameter is listed once by named_parameters() (as embedding.weight); the
        readout's forward multiplier still applies to its use in lm_head.
        """
        if tied == self.readout_tied:
            return
        if tied:
            self.lm_head.weight = self.embedding.weight
        else:
            self.lm_head.weight = nn.Parameter(torch.empty_like(self.embedding.weight))


class MambaLM(TiedReadout, nn.Module):
    """Token ids (B, L) → logits (B, L, vocab)."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = ScaledEmbedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MambaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = ScaledLinear(cfg.d_model, cfg.vocab_size)
        if cfg.tie_readout:
            self.set_readout_tied(True)

    @property
    def mixers(self) -> list[MambaMixer]:
        """The S6-carrying mixers, in depth order (layer index = position)."""
        return [block.mixer for block in self.layers]

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embedding(ids)  # (B, L, D)
        for block in self.layers:
            h = block(h)
        return self.lm_head(self.norm_f(h))  # (B, L, vocab); lm_head's input is the readout's h
