"""Mamba-2 (SSD) language model, following state-spaces/mamba's `Mamba2` (semantics, names, defaults).

Mixer: in_proj → [z (d_inner), x (d_inner), B (G·N), C (G·N), dt (H)]; x, B, C through one depthwise causal
conv1d (k = d_conv) + SiLU; Δ = softplus(dt + dt_bias) clamped to dt_limit; A = −exp(A_log), one scalar per head;
the SSD scan (ssm.scan.ssd) with D per head; gated RMSNorm with the gate before the norm, norm(y · SiLU(z)),
per group ("group", state-spaces/mamba) or over the whole d_inner ("full", older transformers); out_proj.
LM: embedding → pre-norm residual blocks → RMSNorm → readout, tied to the embedding or not.
`init_mamba2` initialises as state-spaces/mamba does.

Parameter names follow state-spaces/mamba and transformers (conv1d, dt_bias, A_log, D, norm, out_proj) except
that in_proj holds its five row blocks as separate weights (in_proj.z, in_proj.x, in_proj.B, in_proj.C,
in_proj.dt), as the S6 model splits x_proj: each block is its own role, with its own init, learning rate and
forward multiplier, and its output is a hook point of its own (the per-slice update probes).
`fused_state_dict` / `split_state_dict` convert to and from the originals' single `in_proj.weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmscope.ssm.config import Discretization
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.model import RMSNorm, ScaledEmbedding, ScaledLinear, TiedReadout
from ssmscope.ssm.roles import Family
from ssmscope.ssm.scan.ssd import ssd_chunked, ssd_reference
from ssmscope.ssm.scan.ssd_probe import SSDStateProbe

IN_PROJ_BLOCKS = ("z", "x", "B", "C", "dt")
"""in_proj's row blocks in the originals' row order."""

NORM_GROUPINGS = ("group", "full")
SSD_SCANS = ("chunked", "reference")


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r}; allowed: a positive integer")


def _pair(value: object) -> bool:
    """A (low, high) of two real numbers."""
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


@dataclass(frozen=True)
class Mamba2Config:
    """A Mamba-2 LM's shape and init ranges (defaults: state-spaces/mamba's Mamba2). d_state is N_x."""

    d_model: int
    n_layers: int
    vocab_size: int
    d_state: int = 128
    headdim: int = 64
    expand: int = 2
    ngroups: int = 1
    d_conv: int = 4
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, math.inf)
    a_init_range: tuple[float, float] = (1.0, 16.0)
    norm: str = "group"
    norm_eps: float = 1e-5
    tie_readout: bool | None = None
    """Readout shares the embedding matrix; None: tied at construction (state-spaces/mamba's default), and under
    a preset as its init base says (ssm.apply.apply_preset ties or unties before initialising)."""
    zero_readout: bool = False
    """An untied readout starts at zero (as ssm.config.MambaConfig.zero_readout)."""
    scan: str = "chunked"
    chunk_size: int = 256

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "vocab_size", "d_state", "headdim", "expand", "ngroups", "d_conv",
                     "chunk_size"):
            _positive_int(name, getattr(self, name))
        if self.d_inner % self.headdim:
            raise ConfigError(f"headdim={self.headdim!r} with d_inner={self.d_inner} (expand·d_model); allowed: "
                              "a divisor of d_inner")
        if self.nheads % self.ngroups:
            raise ConfigError(f"ngroups={self.ngroups!r} with nheads={self.nheads}; allowed: a divisor of nheads")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"dt_min={self.dt_min!r}, dt_max={self.dt_max!r}; allowed: 0 < dt_min <= dt_max")
        if not 0 <= self.dt_init_floor:
            raise ConfigError(f"dt_init_floor={self.dt_init_floor!r}; allowed: >= 0")
        if not _pair(self.dt_limit) or not 0 <= self.dt_limit[0] < self.dt_limit[1]:
            raise ConfigError(f"dt_limit={self.dt_limit!r}; allowed: (low, high) with 0 <= low < high")
        if not _pair(self.a_init_range) or not 0 < self.a_init_range[0] <= self.a_init_range[1]:
            raise ConfigError(f"a_init_range={self.a_init_range!r}; allowed: (low, high) with 0 < low <= high")
        if self.norm not in NORM_GROUPINGS:
            raise ConfigError(f"norm={self.norm!r}; allowed: {', '.join(NORM_GROUPINGS)}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps={self.norm_eps!r}; allowed: > 0")
        if self.tie_readout is not None and not isinstance(self.tie_readout, bool):
            raise ConfigError(f"tie_readout={self.tie_readout!r}; allowed: true, false or unset")
        if not isinstance(self.zero_readout, bool) or (self.zero_readout and self.tie_readout is not False):
            raise ConfigError(f"zero_readout={self.zero_readout!r} with tie_readout={self.tie_readout!r}; a zero "
                              "readout needs tie_readout=False")
        if self.scan not in SSD_SCANS:
            raise ConfigError(f"scan={self.scan!r}; allowed: {', '.join(SSD_SCANS)}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def family(self) -> Family:
        return Family.MAMBA2

    @property
    def discretization(self) -> Discretization:
        """SSD's: Ā = exp(Δ·a), B̄ = Δ·B, what ssmscope calls Euler (as transformers' Mamba-1 scan)."""
        return Discretization.EULER

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def in_proj_rows(self) -> int:
        """z, x, B, C, dt: 2·d_inner + 2·ngroups·d_state + nheads."""
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads


class InProjection(nn.Module):
    """in_proj split by rows: h → (z (d_inner), x (d_inner), B (G·N), C (G·N), dt (H)), all without bias."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        for name, rows in zip(IN_PROJ_BLOCKS, in_proj_block_rows(cfg), strict=True):
            setattr(self, name, ScaledLinear(cfg.d_model, rows))

    def forward(self, hidden: Tensor) -> tuple[Tensor, ...]:
        return tuple(getattr(self, name)(hidden) for name in IN_PROJ_BLOCKS)


def in_proj_block_rows(cfg: Mamba2Config) -> tuple[int, ...]:
    """Rows of z, x, B, C, dt."""
    gn = cfg.ngroups * cfg.d_state
    return cfg.d_inner, cfg.d_inner, gn, gn, cfg.nheads


def fused_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of Mamba2LM with each layer's in_proj blocks concatenated into the originals' in_proj.weight."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".in_proj." in key:
            prefix = key.split(".in_proj.")[0] + ".in_proj.weight"
            if prefix not in out:
                out[prefix] = torch.cat([state[f"{prefix[:-len('weight')]}{b}.weight"] for b in IN_PROJ_BLOCKS])
            continue
        out[key] = value
    return out


def split_state_dict(state: dict[str, Tensor], cfg: Mamba2Config) -> dict[str, Tensor]:
    """The originals' state dict (one in_proj.weight per layer) with in_proj split into Mamba2LM's five blocks."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".in_proj.weight"):
            stem = key[: -len("weight")]
            for name, block in zip(IN_PROJ_BLOCKS, value.split(list(in_proj_block_rows(cfg))), strict=True):
                out[f"{stem}{name}.weight"] = block
            continue
        out[key] = value
    return out


class GatedRMSNorm(nn.Module):
    """norm(y · SiLU(z)) · weight, the mean square taken over groups of group_size channels."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        g = y * F.silu(z)
        grouped = g.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return grouped.flatten(-2) * self.weight


class Mamba2Mixer(nn.Module):
    """One Mamba-2 mixer: (Bt, L, d_model) → (Bt, L, d_model). `scan` overrides the config's scan choice.

    `probe` (set by an observer, never by the model; None: no cost) is handed the next forward's scan inputs and
    output (ssm.scan.ssd_probe.SSDStateProbe), from which it computes the state statistics aside.
    """

    def __init__(self, cfg: Mamba2Config, scan: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.scan = cfg.scan if scan is None else scan
        if self.scan not in SSD_SCANS:
            raise ConfigError(f"scan={self.scan!r}; allowed: {', '.join(SSD_SCANS)}")
        ed, gn, h = cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.nheads
        conv_dim = ed + 2 * gn
        self.in_proj = InProjection(cfg)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1,
                                bias=True)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(ed, ed // cfg.ngroups if cfg.norm == "group" else ed, cfg.norm_eps)
        self.out_proj = ScaledLinear(ed, cfg.d_model)
        self.ssm_input = nn.Identity()  # hook point: x after conv + SiLU
        self.ssm_output = nn.Identity()  # hook point: the scan's y (before the gated norm)
        self.probe: SSDStateProbe | None = None

    def forward(self, hidden: Tensor) -> Tensor:
        cfg = self.cfg
        bt, length, _ = hidden.shape
        ed, gn, h = cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.nheads
        z, x, B, C, dt = self.in_proj(hidden)
        xbc = torch.cat([x, B, C], dim=-1).transpose(1, 2)
        xbc = F.silu(self.conv1d(xbc)[..., :length].transpose(1, 2))  # causal: keep the first L
        x, B, C = xbc.split([ed, gn, gn], dim=-1)
        x = self.ssm_input(x)
        delta = F.softplus(dt + self.dt_bias)  # (Bt, L, H)
        if tuple(cfg.dt_limit) != (0.0, math.inf):
            delta = delta.clamp(*cfg.dt_limit)
        A = -torch.exp(self.A_log)  # (H,)
        args = (x.reshape(bt, length, h, cfg.headdim), delta, A, B.reshape(bt, length, cfg.ngroups, cfg.d_state),
                C.reshape(bt, length, cfg.ngroups, cfg.d_state), self.D)
        y = ssd_chunked(*args, chunk_size=cfg.chunk_size) if self.scan == "chunked" else ssd_reference(*args)
        if self.probe is not None:
            self.probe.observe(*args, y)
        y = self.ssm_output(y.reshape(bt, length, ed))
        return self.out_proj(self.norm(y, z))


class Mamba2Block(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h))."""

    def __init__(self, cfg: Mamba2Config, scan: str | None = None):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg, scan)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.mixer(self.norm(h))


class Mamba2LM(TiedReadout, nn.Module):
    """Token ids (Bt, L) → logits (Bt, L, vocab). Parameters are uninitialised until `init_mamba2`."""

    def __init__(self, cfg: Mamba2Config, scan: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.embedding = ScaledEmbedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Mamba2Block(cfg, scan) for _ in range(cfg.n_layers))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = ScaledLinear(cfg.d_model, cfg.vocab_size)
        if cfg.tie_readout is not False:
            self.set_readout_tied(True)

    @property
    def mixers(self) -> list[Mamba2Mixer]:
        """The SSD-carrying mixers, in depth order (layer index = position)."""
        return [block.mixer for block in self.layers]

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embedding(ids)
        for block in self.layers:
            h = block(h)
        return self.lm_head(self.norm_f(h))


def init_mamba2(model: Mamba2LM, seed: int) -> Mamba2LM:
    """state-spaces/mamba's init: A ~ U(a_init_range) per head, A_log = log A; Δ log-uniform in [dt_min, dt_max],
    floored at dt_init_floor, dt_bias = softplus⁻¹(Δ); D = 1; norms 1; in_proj, conv1d and an untied readout
    PyTorch's default; out_proj PyTorch's default ÷ √n_layers (`rescale_prenorm_residual`, one residual per
    layer); embedding N(0, 0.02²). Draws from `seed` without touching the global RNG's state."""
    cfg = model.cfg
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        nn.init.normal_(model.embedding.weight, std=0.02)
        for block in model.layers:
            mixer = block.mixer
            for name in IN_PROJ_BLOCKS:  # PyTorch's default for the fused in_proj: every block has fan-in d_model
                getattr(mixer.in_proj, name).reset_parameters()
            mixer.conv1d.reset_parameters()
            mixer.out_proj.reset_parameters()
            mixer.out_proj.weight /= math.sqrt(cfg.n_layers)
            lo, hi = cfg.a_init_range
            mixer.A_log.copy_(torch.log(torch.empty_like(mixer.A_log).uniform_(lo, hi)))
            u = torch.rand_like(mixer.dt_bias)
            dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
            dt = dt.clamp(min=cfg.dt_init_floor)
            mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            mixer.D.fill_(1.0)
            mixer.norm.weight.fill_(1.0)
            block.norm.weight.fill_(1.0)
        model.norm_f.weight.fill_(1.0)
        if not model.readout_tied:
            model.lm_head.reset_parameters()
    return model


def build_model(cfg: object, scan: str | None = None) -> nn.Module:
    """The LM a model config describes: Mamba2LM for a Mamba2Config, MambaLM for an ssm.config.MambaConfig."""
    from ssmscope.ssm.model import MambaLM

    return Mamba2LM(cfg, scan) if isinstance(cfg, Mamba2Config) else MambaLM(cfg)  # type: ignore[arg-type]
