"""SSDStateProbe: the SSD state h's statistics for probes, as StateProbe gives them for S6's x.

No module hook sees the state h_t (P×N per head) of Mamba-2's scan, so the mixer hands its probe the scan's
inputs and output (`observe`); the probe recomputes the recurrence (ssm.scan.ssd),
    h_t = exp(Δ_t·a_h)·h_{t−1} + Δ_t·x_t B_tᵀ,
under no_grad in the inputs' dtype, a chunk of time steps at a time (ssd's chunked form, one batched matmul per
chunk), and keeps per-(b, t, channel) sums of squares over N (channel = one of the d_inner = H·P rows of h,
head-major as the mixer flattens x), never all L steps' (Bt, L, H, P, N) states. References (earlier inputs, e.g.
the init step's) run in the same pass as a leading batch of recurrences, giving Σ_n (h − h_ref)².
With `want_grad`, a hook on the scan output y runs the adjoint backwards (the same routine on reversed time),
    λ_t = ∂L/∂y_t ⊗ C_t + exp(Δ_{t+1}·a_h)·λ_{t+1}    (∂L/∂h_t, the total derivative),
and keeps its per-channel sums of squares. The model's output and gradients are untouched (the hook reads only).

Two backends compute the same sums. `compiled` (the default on CPU where ssm.scan.compiled's library builds): C
kernels (csrc/ssd_probe_kernel.h), one task per (batch, head) keeping its P×N states in cache while time advances,
one exp per (b, t, head), the references in the same pass, the adjoint in a second kernel run by the hook — the
states never materialised. `torch` (the fallback, and on GPUs): the chunked recurrence below
(`recurrence_sums`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

BACKENDS = ("auto", "compiled", "torch")


class SSDInputs(NamedTuple):
    """The detached inputs of one SSD scan call (shapes as ssm.scan.ssd): enough to recompute its states."""

    x: Tensor  # (Bt, L, H, P)
    delta: Tensor  # (Bt, L, H), softplus'd and clamped
    A: Tensor  # (H,)
    B: Tensor  # (Bt, L, G, N)
    C: Tensor  # (Bt, L, G, N)
    D: Tensor | None  # (H,)


def _heads(t: Tensor, nheads: int) -> Tensor:
    """(..., G, N) → (..., H, N): each group's row repeated for its H/G heads."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


@dataclass
class SSDStateProbe:
    """Request for, and receiver of, SSD state statistics from one mixer forward (and its backward).

    Outputs: (Bt, L, H·P) sums over N of h² (`state_sumsq`), of (h − h_ref)² per reference (`delta_sumsq`) and of
    λ² (`grad_sumsq`, filled in backward), each with a scalar max |·| over all elements.
    """

    references: dict[str, SSDInputs] = field(default_factory=dict)
    want_grad: bool = False
    chunk: int = 4  # torch backend: time steps whose states are built at once (chunk × one step's states per run)
    backend: str = "auto"  # "compiled" (C, CPU), "torch", or "auto": compiled where it runs, else torch
    # --- outputs ---
    inputs: SSDInputs | None = None
    state_sumsq: Tensor | None = None
    state_maxabs: Tensor | None = None
    delta_sumsq: dict[str, Tensor] = field(default_factory=dict)
    delta_maxabs: dict[str, Tensor] = field(default_factory=dict)
    grad_sumsq: Tensor | None = None
    grad_maxabs: Tensor | None = None
    _compiled: bool = field(default=False, repr=False)  # the backend observe() chose

    def observe(self, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                y: Tensor) -> None:
        """Called by the mixer with the scan's inputs and its output y (Bt, L, H, P)."""
        with torch.no_grad():
            self.inputs = SSDInputs(x.detach(), delta.detach(), A.detach(), B.detach(), C.detach(),
                                    None if D is None else D.detach())
        self._compiled = self._use_compiled()
        if self._compiled:
            self._compiled_sums()
        else:
            with torch.no_grad():
                self._forward_sums()
        if self.want_grad and y.requires_grad:
            y.register_hook(self.on_grad_y)

    def _use_compiled(self) -> bool:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}; allowed: {', '.join(BACKENDS)}")
        inp = self.inputs
        assert inp is not None
        if self.backend == "torch" or inp.x.device.type != "cpu" or inp.x.dtype not in (torch.float32, torch.float64):
            if self.backend == "compiled":
                raise ValueError("the compiled SSD probe runs on float32/float64 CPU tensors")
            return False
        from ssmscope.ssm.scan import compiled

        if self.backend == "auto" and not compiled.is_available():
            return False
        return True

    def _compiled_sums(self) -> None:
        """The forward sums from the compiled kernel (ssm/scan/csrc/ssd_probe_kernel.h)."""
        from ssmscope.ssm.scan import compiled

        inp = self.inputs
        assert inp is not None
        lib = compiled.load_library()
        dtype = inp.x.dtype
        cur = _contiguous(inp, dtype)
        bt, length, nheads, p = cur.x.shape
        groups, n = cur.B.shape[2], cur.B.shape[3]
        new = lambda: cur.x.new_empty(bt, length, nheads * p)  # noqa: E731
        refs = [_contiguous(r, dtype) for r in self.references.values()]  # no copy: earlier steps' `inputs`
        if len(refs) > compiled.MAX_REFS:
            raise ValueError(f"the compiled SSD probe takes at most {compiled.MAX_REFS} references")
        for name, r in zip(self.references, refs, strict=True):
            if r.x.shape != cur.x.shape or r.B.shape != cur.B.shape:
                raise ValueError(f"reference {name!r} of shape {tuple(r.x.shape)} for a scan of {tuple(cur.x.shape)}: "
                                 "references must come from the same probe batch")
        threads = compiled.threads_for(bt * length * nheads * p * n * (1 + len(refs)))
        ssq, mx = new(), new()
        args = compiled.SSDProbeFwdArgs(batch=bt, L=length, H=nheads, P=p, G=groups, N=n, nthreads=threads,
                                        nref=len(refs), x=cur.x.data_ptr(), delta=cur.delta.data_ptr(),
                                        A=cur.A.data_ptr(), B=cur.B.data_ptr(), ssq=ssq.data_ptr(), mx=mx.data_ptr())
        outs = {}
        for i, (name, r) in enumerate(zip(self.references, refs, strict=True)):
            outs[name] = (new(), new())
            args.ref_x[i], args.ref_delta[i] = r.x.data_ptr(), r.delta.data_ptr()
            args.ref_A[i], args.ref_B[i] = r.A.data_ptr(), r.B.data_ptr()
            args.ref_ssq[i], args.ref_mx[i] = outs[name][0].data_ptr(), outs[name][1].data_ptr()
        compiled._check(lib.ssd_fwd[dtype](ctypes.byref(args)), "SSD probe forward")
        self.state_sumsq, self.state_maxabs = ssq, mx.amax()
        for name, (sq, m) in outs.items():
            self.delta_sumsq[name], self.delta_maxabs[name] = sq, m.amax()
        self.inputs = cur  # contiguous: a later step that takes these as its reference reads them without a copy

    def _compiled_adjoint(self, g: Tensor) -> None:
        """The adjoint's sums from the compiled kernel, given ∂L/∂y (Bt, L, H, P)."""
        from ssmscope.ssm.scan import compiled

        cur = self.inputs
        assert cur is not None
        dtype = cur.x.dtype
        bt, length, nheads, p = cur.x.shape
        groups, n = cur.C.shape[2], cur.C.shape[3]
        gy = g.detach().to(dtype).contiguous()
        gssq, gmx = (cur.x.new_empty(bt, length, nheads * p) for _ in range(2))
        args = compiled.SSDProbeBwdArgs(batch=bt, L=length, H=nheads, P=p, G=groups, N=n,
                                        nthreads=compiled.threads_for(bt * length * nheads * p * n), gy=gy.data_ptr(),
                                        delta=cur.delta.data_ptr(), A=cur.A.data_ptr(), C=cur.C.data_ptr(),
                                        gssq=gssq.data_ptr(), gmx=gmx.data_ptr())
        compiled._check(compiled.load_library().ssd_bwd[dtype](ctypes.byref(args)), "SSD probe backward")
        self.grad_sumsq, self.grad_maxabs = gssq, gmx.amax()

    def _forward_sums(self) -> None:
        inp = self.inputs
        assert inp is not None
        runs = [inp, *self.references.values()]
        for ref in runs[1:]:
            if ref.x.shape != inp.x.shape or ref.B.shape != inp.B.shape:
                raise ValueError(f"reference inputs of shape {tuple(ref.x.shape)} for a scan of "
                                 f"{tuple(inp.x.shape)}: references must come from the same probe batch")
        dt, nheads = inp.x.dtype, inp.x.shape[2]
        log_decay = torch.stack([r.delta * r.A for r in runs]).to(dt)  # (K, Bt, L, H)
        dx = torch.stack([r.x * r.delta[..., None] for r in runs]).to(dt)  # (K, Bt, L, H, P)
        b = torch.stack([_heads(r.B, nheads) for r in runs]).to(dt)  # (K, Bt, L, H, N)
        sq, mx = recurrence_sums(log_decay, dx, b, self.chunk)
        self.state_sumsq, self.state_maxabs = sq[0], mx[0]
        for i, name in enumerate(self.references, start=1):
            self.delta_sumsq[name], self.delta_maxabs[name] = sq[i], mx[i]

    def on_grad_y(self, g: Tensor) -> None:
        """The adjoint's per-channel Σ_n λ² and max |λ| from ∂L/∂y (Bt, L, H, P), by the backend `observe` chose. The
        hook that `observe` sets; an observer of a model whose scan ssmscope does not run (probes.hf_mamba2) calls it
        with the model's own ∂L/∂y."""
        if self._compiled:
            self._compiled_adjoint(g)
        else:
            self._torch_adjoint(g)

    def _torch_adjoint(self, g: Tensor) -> None:
        """λ_t in torch, reverse time: the forward recurrence on the time-reversed sequence with the decay shifted by
        one step (λ_t takes exp(Δ_{t+1}·a)·λ_{t+1})."""
        inp = self.inputs
        assert inp is not None
        with torch.no_grad():
            g = g.detach().to(inp.x.dtype)
            log_decay = inp.delta * inp.A  # (Bt, L, H)
            shifted = torch.cat([log_decay[:, 1:], torch.zeros_like(log_decay[:, :1])], dim=1)
            c = _heads(inp.C, inp.x.shape[2])
            sq, mx = recurrence_sums(shifted.flip(1)[None], g.flip(1)[None], c.flip(1)[None], self.chunk)
            self.grad_sumsq, self.grad_maxabs = sq[0].flip(1), mx[0]


def _contiguous(inp: SSDInputs, dtype: torch.dtype) -> SSDInputs:
    """The scan inputs as the kernels read them: contiguous, one dtype."""
    return SSDInputs(*(None if t is None else t.detach().to(dtype).contiguous() for t in inp))


def _maxabs(t: Tensor) -> Tensor:
    """(K', ...) → (K',) max |t| per leading index, from amax and amin (no |t| temporary; on CPU both are far
    faster than aminmax along a dim or an inf-norm over a short last dim)."""
    flat = t.flatten(1)
    return torch.maximum(flat.amax(1), -flat.amin(1))


def recurrence_sums(log_decay: Tensor, u: Tensor, v: Tensor, chunk: int = 4) -> tuple[Tensor, Tensor]:
    """Sums of K recurrences s_t = exp(log_decay_t)·s_{t−1} + u_t v_tᵀ (s_0 = 0; s_t of shape (K, Bt, H, P, N)).

    Returns (K, Bt, L, H·P) per-channel Σ_n and (K,) max |·| of s for k = 0 and of s_k − s_0 for k ≥ 1.
    Shapes: log_decay (K, Bt, L, H) ≤ 0, u (K, Bt, L, H, P), v (K, Bt, L, H, N). The states are built one chunk of
    `chunk` steps at a time with one batched matmul (within a chunk, s_{c+j} = exp(cum_j)·s_c +
    Σ_{i≤j} exp(cum_j − cum_i) u_i v_iᵀ, the SSD form): (K, Bt, chunk, H, P, N) at most, never all L steps.
    """
    k, bt, length, nheads, p = u.shape
    state = u.new_zeros(k, bt, nheads, p, v.shape[-1])
    sums, maxes = [], []
    for c0 in range(0, length, chunk):
        ld, uc, vc = (t[:, :, c0:c0 + chunk].transpose(2, 3) for t in (log_decay, u, v))  # (K, Bt, H, l, ·)
        cum = ld.cumsum(-1)  # (K, Bt, H, l)
        weight = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(
            ~torch.ones(cum.shape[-1], cum.shape[-1], dtype=torch.bool, device=cum.device).tril(), float("-inf")))
        within = (weight[..., None] * uc[..., None, :, :]).transpose(-2, -1)  # (K, Bt, H, l_j, P, l_i)
        states = within @ vc[..., None, :, :] + torch.exp(cum)[..., None, None] * state[:, :, :, None]
        state = states[:, :, :, -1]  # (K, Bt, H, P, N)
        vals = [states[:1], states[:1] - states[1:]] if k > 1 else [states]  # (·, Bt, H, l, P, N)
        sq = torch.cat([torch.linalg.vector_norm(t, dim=-1).square_() for t in vals])  # one pass each, fused
        sums.append(sq.permute(0, 1, 3, 2, 4).flatten(-2))  # (K, Bt, l, H·P)
        maxes.append(torch.cat([_maxabs(t) for t in vals]))
    return torch.cat(sums, dim=2), torch.stack(maxes, dim=1).amax(1)
