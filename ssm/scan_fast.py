"""Fast torch selective scan: chunked over time, with a hand-written backward.

Why not autograd through a loop: autograd keeps every state (B, L, ED, N) and allocates a
fresh full-size tensor per op, which on a CPU is dominated by page faults. Here time is cut
into chunks of `CHUNK` steps; per chunk the discretisation, the readout y = C·x and every
gradient contraction are single vectorised ops on reused (T, B, ED, N) buffers, and only the
recurrence itself steps through time (one fused addcmul per step). Forward keeps only the
state at each chunk start; backward recomputes a chunk's states from it, runs the adjoint
recurrence g_t = C_t ⊗ ∂L/∂y_t + Ā_{t+1} g_{t+1} backwards, and contracts.
Works on any device; float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssm.config import Discretization
from ssm.scan import ScanInputs, StateProbe, softplus_delta

CHUNK = 32  # time steps per chunk: buffers of (CHUNK, B, ED, N) stay cache-sized


class _ChunkBuffers:
    """Reusable (T, B, ED, N) work buffers for one scan call."""

    def __init__(self, T: int, batch: int, ed: int, n: int, like: Tensor, names: tuple[str, ...]):
        for name in names:
            setattr(self, name, like.new_empty(T, batch, ed, n))


def _discretize_chunk(
    inp: ScanInputs, k0: int, k1: int, a: Tensor, bu: Tensor, kappa: Tensor | None
) -> None:
    """Fill a = Ā and bu = κ·B·u for steps k0..k1 (time-major (T, B, ED, N) buffers)."""
    T = k1 - k0
    delta = inp.delta[:, k0:k1].transpose(0, 1)  # (T, B, ED)
    u = inp.u[:, k0:k1].transpose(0, 1)  # (T, B, ED)
    B = inp.B[:, k0:k1].transpose(0, 1)  # (T, B, N)
    a, bu = a[:T], bu[:T]
    torch.mul(delta[..., None], inp.A, out=a)  # ΔA: (T, B, ED, N)
    if inp.discretization == Discretization.EULER:
        torch.mul((delta * u)[..., None], B[:, :, None, :], out=bu)  # Δ·u·B
    else:
        assert kappa is not None
        k = kappa[:T]
        torch.expm1(a, out=k)
        torch.add(k, 1.0, out=a)  # Ā = 1 + expm1(ΔA): one transcendental instead of two
        k.div_(inp.A)  # κ = expm1(ΔA)/A
        torch.mul(u[..., None], B[:, :, None, :], out=bu)
        bu.mul_(k)
        return
    a.exp_()  # Ā = exp(ΔA)


def _states_chunk(a: Tensor, bu: Tensor, x0: Tensor, xs: Tensor) -> None:
    """xs[t] = a[t]·xs[t−1] + bu[t], xs[−1] = x0; all (T, B, ED, N) with T = len(xs)."""
    x = x0
    for t in range(xs.shape[0]):
        x = torch.addcmul(bu[t], a[t], x, out=xs[t])


def _norm_sq(x: Tensor) -> Tensor:
    """Σ_n x² over the last dim without a full-size temporary."""
    return torch.linalg.vector_norm(x, dim=-1).square_()


class _Recompute:
    """Runs the recurrence of some ScanInputs chunk by chunk (no grad), for references."""

    def __init__(self, inp: ScanInputs, T: int, dtype: torch.dtype):
        self.inp = ScanInputs(*(t.to(dtype) for t in inp[:5]), inp.discretization)
        batch, _, ed = inp.u.shape
        n = inp.A.shape[1]
        names = ("a", "bu", "xs") + (("kappa",) if inp.discretization == Discretization.ZOH else ())
        self.buf = _ChunkBuffers(T, batch, ed, n, self.inp.u, names)
        self.x = self.inp.u.new_zeros(batch, ed, n)

    def chunk(self, k0: int, k1: int) -> Tensor:
        b, T = self.buf, k1 - k0
        _discretize_chunk(self.inp, k0, k1, b.a, b.bu, getattr(b, "kappa", None))
        _states_chunk(b.a[:T], b.bu[:T], self.x, b.xs[:T])
        self.x = b.xs[T - 1].clone()
        return b.xs[:T]


class _FastScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, disc: Discretization, probe: StateProbe | None):
        inp = ScanInputs(u, delta, A, B, C, disc)
        batch, L, ed = u.shape
        n = A.shape[1]
        T = min(CHUNK, L)
        zoh = disc == Discretization.ZOH
        buf = _ChunkBuffers(T, batch, ed, n, u, ("a", "bu", "xs") + (("kappa",) if zoh else ()))
        y = u.new_empty(batch, L, ed)
        starts = list(range(0, L, T))
        checkpoints = u.new_empty(len(starts), batch, ed, n)  # state before each chunk
        x = u.new_zeros(batch, ed, n)
        refs = {}
        if probe is not None:
            probe.state_sumsq = u.new_empty(batch, L, ed)
            probe.state_maxabs = u.new_empty(batch, L, ed)
            if probe.keep_states:
                probe.states = u.new_empty(batch, L, ed, n)
            refs = {name: _Recompute(r, T, u.dtype) for name, r in probe.references.items()}
            for name in refs:
                probe.delta_sumsq[name] = u.new_empty(batch, L, ed)
                probe.delta_maxabs[name] = u.new_empty(batch, L, ed)
        for c, k0 in enumerate(starts):
            k1 = min(k0 + T, L)
            Tc = k1 - k0
            checkpoints[c].copy_(x)
            _discretize_chunk(inp, k0, k1, buf.a, buf.bu, getattr(buf, "kappa", None))
            xs = buf.xs[:Tc]
            _states_chunk(buf.a[:Tc], buf.bu[:Tc], x, xs)
            x = xs[Tc - 1].clone()
            Cc = C[:, k0:k1].transpose(0, 1)  # (T, B, N)
            y[:, k0:k1].copy_(torch.matmul(xs, Cc[..., None])[..., 0].transpose(0, 1))
            if probe is not None:
                probe.state_sumsq[:, k0:k1] = _norm_sq(xs).transpose(0, 1)
                probe.state_maxabs[:, k0:k1] = xs.abs().amax(-1).transpose(0, 1)
                if probe.keep_states:
                    probe.states[:, k0:k1] = xs.transpose(0, 1)
                for name, rec in refs.items():
                    diff = xs - rec.chunk(k0, k1)
                    probe.delta_sumsq[name][:, k0:k1] = _norm_sq(diff).transpose(0, 1)
                    probe.delta_maxabs[name][:, k0:k1] = diff.abs().amax(-1).transpose(0, 1)
        ctx.save_for_backward(u, delta, A, B, C, checkpoints)
        ctx.disc, ctx.T, ctx.probe = disc, T, probe
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, checkpoints = ctx.saved_tensors
        disc, T, probe = ctx.disc, ctx.T, ctx.probe
        inp = ScanInputs(u, delta, A, B, C, disc)
        zoh = disc == Discretization.ZOH
        batch, L, ed = u.shape
        n = A.shape[1]
        grad_y = grad_y.contiguous()
        names = ("a", "bu", "xs", "gs", "xp") + (("kappa", "w") if zoh else ())
        buf = _ChunkBuffers(T, batch, ed, n, u, names)
        grad_u = torch.zeros_like(u)
        grad_delta = torch.zeros_like(delta)
        grad_A = torch.zeros_like(A)
        grad_B = torch.zeros_like(B)
        grad_C = torch.zeros_like(C)
        want_grad = probe is not None and probe.want_grad
        if want_grad:
            probe.grad_sumsq = u.new_empty(batch, L, ed)
        g_next = u.new_zeros(batch, ed, n)  # adjoint at the first step of the next chunk
        a_next = u.new_zeros(batch, ed, n)  # Ā at that step
        starts = list(range(0, L, T))
        for c in reversed(range(len(starts))):
            k0 = starts[c]
            k1 = min(k0 + T, L)
            Tc = k1 - k0
            a, bu, xs, gs, xp = buf.a[:Tc], buf.bu[:Tc], buf.xs[:Tc], buf.gs[:Tc], buf.xp[:Tc]
            _discretize_chunk(inp, k0, k1, buf.a, buf.bu, getattr(buf, "kappa", None))
            _states_chunk(a, bu, checkpoints[c], xs)
            gy = grad_y[:, k0:k1].transpose(0, 1)  # (T, B, ED)
            Cc = C[:, k0:k1].transpose(0, 1)  # (T, B, N)
            torch.mul(gy[..., None], Cc[:, :, None, :], out=gs)  # direct term C ⊗ ∂L/∂y
            g = g_next
            for t in reversed(range(Tc)):  # adjoint: g_t = direct_t + Ā_{t+1} g_{t+1}
                g = gs[t].addcmul_(a_next, g)
                a_next = a[t]
            g_next = gs[0].clone()
            a_next = a[0].clone()
            if want_grad:
                probe.grad_sumsq[:, k0:k1] = _norm_sq(gs).transpose(0, 1)
            # ∂L/∂C_t[n] = Σ_e ∂L/∂y_t[e] x_t[e, n]
            grad_C[:, k0:k1] = torch.matmul(gy[:, :, None, :], xs)[:, :, 0].transpose(0, 1)
            # decay path: ∂L/∂(ΔA) = g_t ⊙ Ā_t ⊙ x_{t−1}
            xp[0].copy_(checkpoints[c])
            xp[1:].copy_(xs[:-1])
            gl = xp.mul_(a).mul_(gs)  # (T, B, ED, N)
            dl = delta[:, k0:k1].transpose(0, 1)  # (T, B, ED)
            uc = u[:, k0:k1].transpose(0, 1)
            Bc = B[:, k0:k1].transpose(0, 1)  # (T, B, N)
            gdelta = torch.mul(gl, A, out=xs).sum(-1)  # (T, B, ED); xs is spent
            grad_A += gl.mul_(dl[..., None]).sum((0, 1))  # Σ_{t,b} ∂L/∂(ΔA) Δ; gl is spent
            # input path: bu = κ ⊙ B ⊗ u, ∂L/∂bu = g
            if not zoh:  # κ = Δ
                s = torch.matmul(gs, Bc[..., None])[..., 0]  # Σ_n g B: (T, B, ED)
                gdelta += s * uc
                grad_u[:, k0:k1] = (s * dl).transpose(0, 1)
                grad_B[:, k0:k1] = torch.matmul((dl * uc)[:, :, None, :], gs)[:, :, 0].transpose(0, 1)
            else:  # κ = expm1(ΔA)/A: ∂κ/∂Δ = Ā, ∂κ/∂A = (Δ Ā − κ)/A
                kappa = buf.kappa[:Tc]
                w = torch.mul(gs, kappa, out=buf.w[:Tc])  # g ⊙ κ
                grad_u[:, k0:k1] = torch.matmul(w, Bc[..., None])[..., 0].transpose(0, 1)
                grad_B[:, k0:k1] = torch.matmul(uc[:, :, None, :], w)[:, :, 0].transpose(0, 1)
                gk = gs.mul_(uc[..., None]).mul_(Bc[:, :, None, :])  # ∂L/∂κ = g ⊙ u ⊗ B
                gdelta += torch.mul(gk, a, out=w).sum(-1)
                dka = a.mul_(dl[..., None]).sub_(kappa).div_(A)  # (Δ Ā − κ)/A; a is spent
                grad_A += dka.mul_(gk).sum((0, 1))
            grad_delta[:, k0:k1] = gdelta.transpose(0, 1)
        return grad_u, grad_delta, grad_A, grad_B, grad_C, None, None



def scan_fast(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    discretization: Discretization,
    probe: StateProbe | None = None,
) -> Tensor:
    """Chunked S6 scan with a hand-written backward; see ssm.scan.selective_scan for shapes."""
    out_dtype = u.dtype
    work = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype
    delta = softplus_delta(dt.to(work), dt_bias.to(work))  # (B, L, ED)
    args = [t.to(work).contiguous() for t in (u, delta, A, B, C)]
    y = _FastScanFn.apply(*args, Discretization(discretization), probe)
    if probe is not None:
        probe.inputs = ScanInputs(*(t.detach() for t in args), Discretization(discretization))
    return (y + args[0] * D.to(work)).to(out_dtype)
