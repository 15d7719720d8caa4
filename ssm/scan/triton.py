"""Triton selective scan: fused forward and hand-written backward, with fused state probes.

Same signature and maths as ssm.scan.selective_scan (see ssm/scan/fast.py for the derivation):
    Δ_t = softplus(dt_t + dt_bias),  x_t = exp(Δ_t A) ⊙ x_{t−1} + κ ⊙ B_t u_t,  y_t = C_t·x_t + D u_t
with κ = Δ (Euler) or expm1(ΔA)/A (ZOH). Design (docs/triton.md has the long version):

* grid (B, ⌈ED / BLOCK_ED⌉): one program owns BLOCK_ED channels of one sequence and keeps
  their state x (BLOCK_ED, N_PAD) in registers for the whole sequence, in fp32 (fp64 when the
  inputs are fp64); bf16/fp16 inputs are read as they are and converted on load.
* Time is walked sequentially in tiles of TT steps: a tile's u, dt, B, C (and ∂L/∂y) are
  loaded with one vectorised load each, so the per-step loop touches only registers; step i
  is picked out of a tile by a masked sum (exact: all other terms are zero).
* Forward stores the state at the start of every tile (a checkpoint, only when a gradient is
  needed). Backward walks the tiles in reverse; per tile it recomputes the tile's TT states
  from its checkpoint into a per-program scratch buffer (TT × BLOCK_ED × N_PAD, cache-sized),
  then runs the adjoint g_t = C_t ∂L/∂y_t + Ā_{t+1} g_{t+1} backwards reading x_{t−1} from
  the scratch. x_{t−1} is never reconstructed as (x_t − B̄u_t)/Ā_t, which blows up once
  Ā_t underflows (ΔA ≪ −80 happens for large N).
* Reductions over channels (∂L/∂B, ∂L/∂C) are written per channel block and summed in torch,
  reductions over batch and time (∂L/∂A, ∂L/∂D, ∂L/∂dt_bias) per sequence and summed in torch:
  bitwise reproducible (DETERMINISTIC = False switches ∂L/∂B, ∂L/∂C to fp32 atomic adds).
* Probes: Σ_n x², max_n |x| per step; one reference recurrence (ScanInputs of another scan) is
  run alongside x in the same loop for Σ_n (x − x_ref)², max_n |x − x_ref|; further
  references each get a probe-only pass of the same kernel; Σ_n g² comes from the backward.

The module is long because the forward and backward kernels, their launch wrappers and the
autograd Function only make sense together; the kernels are written out step by step.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmscope.ssm.config import Discretization
from ssmscope.ssm.scan.types import ScanInputs, StateProbe

# --- launch knobs: first guesses from register counts of the sm_90 build (ptxas, no GPU run yet);
# bench/scan_gpu.py --sweep measures the alternatives. See docs/triton.md. ---
TIME_TILE = 8  # TT: steps per tile = steps per vectorised load = checkpoint interval
MAX_BLOCK_ELEMS = 512  # BLOCK_ED × N_PAD: state elements one program keeps in registers
ELEMS_PER_THREAD = 4  # num_warps = BLOCK_ED × N_PAD / (32 · this): backward stays under 255 registers
MIN_PROGRAMS_PER_SM = 4  # shrink BLOCK_ED until B·⌈ED/BLOCK_ED⌉ reaches this many per SM
DETERMINISTIC = True  # ∂L/∂B, ∂L/∂C as per-channel-block partials summed by torch (bitwise
# reproducible; B·⌈ED/BLOCK_ED⌉·L·N floats each); False: fp32 atomic adds into (B, L, N)


def _device(fn):
    """@triton.jit for a device helper; under the interpreter the plain function.

    The interpreter re-patches triton.language on every call of a nested @triton.jit function
    (~2.5 ms each, several per time step); a plain function called from inside an interpreted
    kernel runs on the already-patched language and computes the same thing.
    """
    return fn if _interpreting() else triton.jit(fn)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if _interpreting():
    # tl.sum and tl.max are @jit functions too (~3 ms a call in the interpreter); tl.reduce with
    # the standard combine functions is recognised by the interpreter and runs as one numpy call.
    def _sum(x, axis):
        return tl.reduce(x, axis, tl.standard._sum_combine)

    def _max(x, axis):
        return tl.reduce(x, axis, tl.standard._elementwise_max)

else:
    _sum, _max = tl.sum, tl.max


@_device
def _expm1(x, ex, F64: tl.constexpr):
    """expm1(x) given ex = exp(x): a Taylor polynomial for |x| < 0.1, else ex − 1.

    ex − 1 alone loses log10(1/|x|) digits as x → 0. fp32: degree 4 (series error
    |x|⁴/120 < 1e-6 relative at 0.1, where ex − 1 is good to 6e-7); fp64: degree 8 (3e-14).
    Costs no second transcendental: exp is needed for Ā anyway.
    """
    if F64:
        p = x * (1.0 / 40320.0) + 1.0 / 5040.0
        p = p * x + 1.0 / 720.0
        p = p * x + 1.0 / 120.0
        p = p * x + 1.0 / 24.0
        p = p * x + 1.0 / 6.0
    else:
        p = x * (1.0 / 24.0) + 1.0 / 6.0
    p = p * x + 0.5
    p = p * x + 1.0
    return tl.where(tl.abs(x) < 0.1, p * x, ex - 1.0)


@_device
def _softplus(z):
    """softplus(z) = max(z, 0) + log1p(exp(−|z|)); = z above 20, as torch's default threshold.

    log1p(w), w ∈ (0, 1]: alternating series (error < w¹⁰/11 relative) for w < 0.05, else
    log(1 + w); so Δ keeps its relative precision for very negative z (tiny Δ).
    """
    w = tl.exp(-tl.abs(z))
    p = w * (-1.0 / 10.0) + 1.0 / 9.0
    p = p * w - 1.0 / 8.0
    p = p * w + 1.0 / 7.0
    p = p * w - 1.0 / 6.0
    p = p * w + 1.0 / 5.0
    p = p * w - 1.0 / 4.0
    p = p * w + 1.0 / 3.0
    p = p * w - 1.0 / 2.0
    p = p * w + 1.0
    log1p = tl.where(w < 0.05, p * w, tl.log(1.0 + w))
    return tl.where(z > 20.0, z, tl.maximum(z, 0.0) + log1p)


@_device
def _step(x, d_i, u_i, B_i, A, ZOH: tl.constexpr, F64: tl.constexpr):
    """One step x ← Ā x + κ B u of a (BLOCK_ED, N_PAD) state; d_i, u_i: (BLOCK_ED,), B_i: (N_PAD,)."""
    dA = d_i[:, None] * A  # (BLOCK_ED, N_PAD)
    a = tl.exp(dA)
    bu = u_i[:, None] * B_i[None, :]
    if ZOH:
        bu = bu * (_expm1(dA, a, F64) / A)  # κ = expm1(ΔA)/A
    else:
        bu = bu * d_i[:, None]  # κ = Δ
    return a * x + bu


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,  # inputs
    y_ptr, ckpt_ptr, delta_ptr, sumsq_ptr, maxabs_ptr, states_ptr,  # outputs
    ru_ptr, rdelta_ptr, rA_ptr, rB_ptr, dsumsq_ptr, dmaxabs_ptr,  # reference recurrence
    L, ED, N,
    CDT: tl.constexpr, F64: tl.constexpr, BLOCK_ED: tl.constexpr, N_PAD: tl.constexpr, TT: tl.constexpr,
    ZOH: tl.constexpr, WRITE_Y: tl.constexpr, SAVE_CKPT: tl.constexpr, WRITE_DELTA: tl.constexpr,
    STATS: tl.constexpr, KEEP_STATES: tl.constexpr, HAS_REF: tl.constexpr, REF_ZOH: tl.constexpr,
):
    # u, dt, y, delta, stats: (B, L, ED); A: (ED, N); B, C: (B, L, N); D, bias: (ED,)
    # ckpt: (B, ⌈L/TT⌉, ED, N) state before each tile; states: (B, L, ED, N)
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    offs_e = pid_e * BLOCK_ED + tl.arange(0, BLOCK_ED)
    offs_n = tl.arange(0, N_PAD)
    offs_t = tl.arange(0, TT)
    mask_e = offs_e < ED
    mask_en = mask_e[:, None] & (offs_n < N)[None, :]
    off_en = offs_e[:, None] * N + offs_n[None, :]  # (BLOCK_ED, N_PAD)
    # padded modes get A = −1 (not 0: κ = expm1(ΔA)/A) and B = C = 0, so their state stays 0
    A = tl.load(A_ptr + off_en, mask=mask_en, other=-1.0).to(CDT)
    D = tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(CDT)
    bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.0).to(CDT)
    seq_te = pid_b * L * ED  # start of this sequence in (B, L, ED) tensors
    seq_tn = pid_b * L * N
    x = tl.zeros((BLOCK_ED, N_PAD), dtype=CDT)
    if HAS_REF:
        rA = tl.load(rA_ptr + off_en, mask=mask_en, other=-1.0).to(CDT)
        xr = tl.zeros((BLOCK_ED, N_PAD), dtype=CDT)
    n_tiles = tl.cdiv(L, TT)
    for k in range(n_tiles):
        tt = k * TT + offs_t  # (TT,)
        mask_t = tt < L
        m_te = mask_t[:, None] & mask_e[None, :]
        m_tn = mask_t[:, None] & (offs_n < N)[None, :]
        off_te = seq_te + tt[:, None] * ED + offs_e[None, :]  # (TT, BLOCK_ED)
        off_tn = seq_tn + tt[:, None] * N + offs_n[None, :]  # (TT, N_PAD)
        u = tl.load(u_ptr + off_te, mask=m_te, other=0.0).to(CDT)
        z = tl.load(dt_ptr + off_te, mask=m_te, other=0.0).to(CDT) + bias[None, :]
        delta = _softplus(z)  # (TT, BLOCK_ED)
        Bt = tl.load(B_ptr + off_tn, mask=m_tn, other=0.0).to(CDT)  # (TT, N_PAD)
        Ct = tl.load(C_ptr + off_tn, mask=m_tn, other=0.0).to(CDT)
        if SAVE_CKPT:
            tl.store(ckpt_ptr + ((pid_b * n_tiles + k) * ED * N + off_en), x, mask=mask_en)
        if WRITE_DELTA:
            tl.store(delta_ptr + off_te, delta, mask=m_te)
        y = tl.zeros((TT, BLOCK_ED), dtype=CDT)
        if STATS:
            ssq = tl.zeros((TT, BLOCK_ED), dtype=CDT)
            mab = tl.zeros((TT, BLOCK_ED), dtype=CDT)
        if HAS_REF:
            ru = tl.load(ru_ptr + off_te, mask=m_te, other=0.0).to(CDT)
            rd = tl.load(rdelta_ptr + off_te, mask=m_te, other=0.0).to(CDT)
            rBt = tl.load(rB_ptr + off_tn, mask=m_tn, other=0.0).to(CDT)
            dsq = tl.zeros((TT, BLOCK_ED), dtype=CDT)
            dab = tl.zeros((TT, BLOCK_ED), dtype=CDT)
        for i in range(TT):
            sel = (offs_t == i)[:, None]  # (TT, 1): a masked sum picks step i out of a tile, exactly
            d_i = _sum(tl.where(sel, delta, 0.0), axis=0)  # (BLOCK_ED,)
            u_i = _sum(tl.where(sel, u, 0.0), axis=0)
            B_i = _sum(tl.where(sel, Bt, 0.0), axis=0)  # (N_PAD,)
            x = _step(x, d_i, u_i, B_i, A, ZOH, F64)  # (BLOCK_ED, N_PAD)
            if WRITE_Y:
                C_i = _sum(tl.where(sel, Ct, 0.0), axis=0)
                y = tl.where(sel, _sum(x * C_i[None, :], axis=1)[None, :], y)
            if STATS:
                ssq = tl.where(sel, _sum(x * x, axis=1)[None, :], ssq)
                mab = tl.where(sel, _max(tl.abs(x), axis=1)[None, :], mab)
            if KEEP_STATES:
                t = k * TT + i  # (pid_b · L + t) · ED · N is int64 through pid_b
                in_seq = (t + 0 * offs_e) < L  # (BLOCK_ED,): a block mask, not a scalar one
                tl.store(states_ptr + (pid_b * L + t) * ED * N + off_en, x, mask=mask_en & in_seq[:, None])
            if HAS_REF:
                rd_i = _sum(tl.where(sel, rd, 0.0), axis=0)
                ru_i = _sum(tl.where(sel, ru, 0.0), axis=0)
                rB_i = _sum(tl.where(sel, rBt, 0.0), axis=0)
                xr = _step(xr, rd_i, ru_i, rB_i, rA, REF_ZOH, F64)
                diff = x - xr
                dsq = tl.where(sel, _sum(diff * diff, axis=1)[None, :], dsq)
                dab = tl.where(sel, _max(tl.abs(diff), axis=1)[None, :], dab)
        if WRITE_Y:
            y = y + D[None, :] * u  # the D skip
            tl.store(y_ptr + off_te, y.to(y_ptr.dtype.element_ty), mask=m_te)
        if STATS:
            tl.store(sumsq_ptr + off_te, ssq, mask=m_te)
            tl.store(maxabs_ptr + off_te, mab, mask=m_te)
        if HAS_REF:
            tl.store(dsumsq_ptr + off_te, dsq, mask=m_te)
            tl.store(dmaxabs_ptr + off_te, dab, mask=m_te)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, gy_ptr, ckpt_ptr, scratch_ptr,  # inputs
    gu_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, gsumsq_ptr,  # outputs
    L, ED, N, N_EB,
    CDT: tl.constexpr, F64: tl.constexpr, BLOCK_ED: tl.constexpr, N_PAD: tl.constexpr, TT: tl.constexpr,
    ZOH: tl.constexpr, WANT_GRAD: tl.constexpr, ATOMIC_BC: tl.constexpr,
):
    # gy, gu, gdt, gsumsq: (B, L, ED); gA: (B, ED, N) and gD, gbias: (B, ED) per-sequence partials;
    # gB, gC: (B, N_EB, L, N) per-channel-block partials, or (B, L, N) accumulated atomically
    # (ATOMIC_BC); scratch: one (TT, BLOCK_ED, N_PAD) slab per program, the states of the tile
    # being differentiated.
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    offs_e = pid_e * BLOCK_ED + tl.arange(0, BLOCK_ED)
    offs_n = tl.arange(0, N_PAD)
    offs_t = tl.arange(0, TT)
    mask_e = offs_e < ED
    mask_en = mask_e[:, None] & (offs_n < N)[None, :]
    off_en = offs_e[:, None] * N + offs_n[None, :]
    A = tl.load(A_ptr + off_en, mask=mask_en, other=-1.0).to(CDT)
    D = tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(CDT)
    bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.0).to(CDT)
    seq_te = pid_b * L * ED
    seq_tn = pid_b * L * N
    scr = scratch_ptr + (pid_b * N_EB + pid_e) * (TT * BLOCK_ED * N_PAD)
    off_scr = tl.arange(0, BLOCK_ED)[:, None] * N_PAD + offs_n[None, :]  # (BLOCK_ED, N_PAD)
    g = tl.zeros((BLOCK_ED, N_PAD), dtype=CDT)  # adjoint ∂L/∂x_{t+1} carried backwards
    a_next = tl.zeros((BLOCK_ED, N_PAD), dtype=CDT)  # Ā_{t+1}
    gA = tl.zeros((BLOCK_ED, N_PAD), dtype=CDT)
    gD = tl.zeros((BLOCK_ED,), dtype=CDT)
    gbias = tl.zeros((BLOCK_ED,), dtype=CDT)
    n_tiles = tl.cdiv(L, TT)
    for kk in range(n_tiles):
        k = n_tiles - 1 - kk
        tt = k * TT + offs_t
        mask_t = tt < L
        m_te = mask_t[:, None] & mask_e[None, :]
        m_tn = mask_t[:, None] & (offs_n < N)[None, :]
        off_te = seq_te + tt[:, None] * ED + offs_e[None, :]
        off_tn = seq_tn + tt[:, None] * N + offs_n[None, :]
        u = tl.load(u_ptr + off_te, mask=m_te, other=0.0).to(CDT)
        z = tl.load(dt_ptr + off_te, mask=m_te, other=0.0).to(CDT) + bias[None, :]
        delta = _softplus(z)
        gy = tl.load(gy_ptr + off_te, mask=m_te, other=0.0).to(CDT)  # 0 past L: no adjoint there
        Bt = tl.load(B_ptr + off_tn, mask=m_tn, other=0.0).to(CDT)
        Ct = tl.load(C_ptr + off_tn, mask=m_tn, other=0.0).to(CDT)
        x0 = tl.load(ckpt_ptr + ((pid_b * n_tiles + k) * ED * N + off_en), mask=mask_en, other=0.0).to(CDT)
        # recompute the tile's states x_{t0} .. x_{t0+TT−1} into the scratch slab
        x = x0
        for i in range(TT):
            sel = (offs_t == i)[:, None]
            d_i = _sum(tl.where(sel, delta, 0.0), axis=0)
            u_i = _sum(tl.where(sel, u, 0.0), axis=0)
            B_i = _sum(tl.where(sel, Bt, 0.0), axis=0)
            x = _step(x, d_i, u_i, B_i, A, ZOH, F64)
            tl.store(scr + i * BLOCK_ED * N_PAD + off_scr, x)
        tl.debug_barrier()  # the slab is read back below, possibly by other threads
        gu_t = tl.zeros((TT, BLOCK_ED), dtype=CDT)
        gd_t = tl.zeros((TT, BLOCK_ED), dtype=CDT)
        gB_t = tl.zeros((TT, N_PAD), dtype=CDT)
        gC_t = tl.zeros((TT, N_PAD), dtype=CDT)
        if WANT_GRAD:
            gsq_t = tl.zeros((TT, BLOCK_ED), dtype=CDT)
        x_t = x
        for ii in range(TT):
            i = TT - 1 - ii
            sel = (offs_t == i)[:, None]
            d_i = _sum(tl.where(sel, delta, 0.0), axis=0)
            u_i = _sum(tl.where(sel, u, 0.0), axis=0)
            B_i = _sum(tl.where(sel, Bt, 0.0), axis=0)
            C_i = _sum(tl.where(sel, Ct, 0.0), axis=0)
            gy_i = _sum(tl.where(sel, gy, 0.0), axis=0)
            # x_{t−1}: slab row i − 1, or the checkpoint for the first step (row (i−1) mod TT is
            # then a valid address whose value is discarded)
            x_prev = tl.load(scr + ((i + TT - 1) % TT) * BLOCK_ED * N_PAD + off_scr).to(CDT)
            x_prev = tl.where(i > 0, x_prev, x0)
            dA = d_i[:, None] * A
            a = tl.exp(dA)
            g = gy_i[:, None] * C_i[None, :] + a_next * g  # adjoint g_t
            gC_t = tl.where(sel, _sum(gy_i[:, None] * x_t, axis=0)[None, :], gC_t)
            gl = g * a * x_prev  # ∂L/∂(ΔA) through the decay
            gd_i = _sum(gl * A, axis=1)
            gA += gl * d_i[:, None]
            if ZOH:  # κ = expm1(ΔA)/A: ∂κ/∂Δ = Ā, ∂κ/∂A = (Δ Ā − κ)/A
                kappa = _expm1(dA, a, F64) / A
                w = g * kappa  # ∂L/∂(B u)
                gu_i = _sum(w * B_i[None, :], axis=1)
                gB_i = _sum(w * u_i[:, None], axis=0)
                gk = g * (u_i[:, None] * B_i[None, :])  # ∂L/∂κ
                gd_i += _sum(gk * a, axis=1)
                gA += gk * (d_i[:, None] * a - kappa) / A
            else:  # κ = Δ
                s = _sum(g * B_i[None, :], axis=1)  # Σ_n g B
                gd_i += s * u_i
                gu_i = s * d_i
                gB_i = _sum(g * (d_i * u_i)[:, None], axis=0)
            gu_t = tl.where(sel, gu_i[None, :], gu_t)
            gd_t = tl.where(sel, gd_i[None, :], gd_t)
            gB_t = tl.where(sel, gB_i[None, :], gB_t)
            if WANT_GRAD:
                gsq_t = tl.where(sel, _sum(g * g, axis=1)[None, :], gsq_t)
            a_next = a
            x_t = x_prev
        tl.debug_barrier()  # the next tile overwrites the slab
        # softplus' = sigmoid, = 1 above the threshold (as torch)
        gdt = gd_t * tl.where(z > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-z)))
        tl.store(gu_ptr + off_te, (gu_t + D[None, :] * gy).to(gu_ptr.dtype.element_ty), mask=m_te)
        tl.store(gdt_ptr + off_te, gdt.to(gdt_ptr.dtype.element_ty), mask=m_te)
        gD += _sum(gy * u, axis=0)
        gbias += _sum(gdt, axis=0)
        if ATOMIC_BC:
            tl.atomic_add(gB_ptr + off_tn, gB_t, mask=m_tn)
            tl.atomic_add(gC_ptr + off_tn, gC_t, mask=m_tn)
        else:
            off_part = (pid_b * N_EB + pid_e) * L * N + tt[:, None] * N + offs_n[None, :]
            tl.store(gB_ptr + off_part, gB_t, mask=m_tn)
            tl.store(gC_ptr + off_part, gC_t, mask=m_tn)
        if WANT_GRAD:
            tl.store(gsumsq_ptr + off_te, gsq_t, mask=m_te)
    tl.store(gA_ptr + pid_b * ED * N + off_en, gA, mask=mask_en)
    tl.store(gD_ptr + pid_b * ED + offs_e, gD, mask=mask_e)
    tl.store(gbias_ptr + pid_b * ED + offs_e, gbias, mask=mask_e)


# ---------------------------------------------------------------------------------------------
# launch configuration and the autograd wrapper


def launch_config(batch: int, ed: int, n: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_ED, N_PAD, TT, num_warps) for a scan of B=batch sequences, ED channels, N modes."""
    n_pad = triton.next_power_of_2(n)
    block_ed = min(triton.next_power_of_2(ed), max(1, MAX_BLOCK_ELEMS // n_pad))
    if device.type == "cuda":  # enough programs to fill the SMs: the time loop is latency-bound
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        while block_ed > 4 and batch * triton.cdiv(ed, block_ed) < MIN_PROGRAMS_PER_SM * sms:
            block_ed //= 2
    num_warps = max(1, min(8, block_ed * n_pad // (32 * ELEMS_PER_THREAD)))
    return block_ed, n_pad, TIME_TILE, num_warps


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp64 if any input is fp64 (so the kernel can be gradchecked), else fp32 (bf16 included)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _check_inputs(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, bias: Tensor) -> None:
    batch, length, ed = u.shape
    n = A.shape[-1]
    expected = {"u": (batch, length, ed), "dt": (batch, length, ed), "A": (ed, n), "B": (batch, length, n),
                "C": (batch, length, n), "D": (ed,), "dt_bias": (ed,)}
    for (name, shape), t in zip(expected.items(), (u, dt, A, B, C, D, bias), strict=True):
        if tuple(t.shape) != shape:
            raise ValueError(f"scan_triton: {name} has shape {tuple(t.shape)}; expected {shape}")
        if t.device != u.device:
            raise ValueError(f"scan_triton: {name} is on {t.device}, u on {u.device}")
    if u.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"scan_triton needs CUDA tensors (got {u.device}); on the CPU use backend='fast', "
            "or set TRITON_INTERPRET=1 before importing ssm.scan.triton (slow; tests only)"
        )


def _launch_forward(
    args: list[Tensor], ref: ScanInputs, zoh: bool, cdt: torch.dtype, cfg: tuple[int, int, int, int],
    outputs: dict[str, Tensor],
) -> None:
    """Launch the forward kernel; the keys of `outputs` switch its optional outputs on."""
    u, dt, A, B, C, D, bias = args
    batch, length, ed = u.shape
    n = A.shape[1]
    block_ed, n_pad, tt, num_warps = cfg
    dummy = u.new_empty(1, dtype=cdt)
    if ref is not None:
        if tuple(ref.u.shape) != tuple(u.shape) or tuple(ref.A.shape) != tuple(A.shape):
            raise ValueError(
                f"probe reference has u {tuple(ref.u.shape)}, A {tuple(ref.A.shape)}; "
                f"the scan has u {tuple(u.shape)}, A {tuple(A.shape)}"
            )
        ru, rd, rA, rB = (t.detach().to(u.device).contiguous() for t in (ref.u, ref.delta, ref.A, ref.B))
    else:
        ru = rd = rA = rB = dummy
    out = {k: outputs.get(k, dummy) for k in
           ("y", "ckpt", "delta", "sumsq", "maxabs", "states", "dsumsq", "dmaxabs")}
    grid = (batch, triton.cdiv(ed, block_ed))
    _scan_fwd_kernel[grid](
        u, dt, A, B, C, D, bias,
        out["y"], out["ckpt"], out["delta"], out["sumsq"], out["maxabs"], out["states"],
        ru, rd, rA, rB, out["dsumsq"], out["dmaxabs"],
        length, ed, n,
        CDT=_TL_DTYPE[cdt], F64=cdt == torch.float64, BLOCK_ED=block_ed, N_PAD=n_pad, TT=tt,
        ZOH=zoh, WRITE_Y="y" in outputs, SAVE_CKPT="ckpt" in outputs, WRITE_DELTA="delta" in outputs,
        STATS="sumsq" in outputs, KEEP_STATES="states" in outputs, HAS_REF=ref is not None,
        REF_ZOH=ref is not None and Discretization(ref.discretization) == Discretization.ZOH,
        num_warps=num_warps,
    )


class _TritonScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, D, dt_bias, disc, probe, needs_grad):
        args = [t.contiguous() for t in (u, dt, A, B, C, D, dt_bias)]
        u, dt, A, B, C, D, dt_bias = args
        batch, length, ed = u.shape
        n = A.shape[1]
        cdt = _compute_dtype(*args)
        zoh = disc == Discretization.ZOH
        cfg = launch_config(batch, ed, n, u.device)
        tt = cfg[2]
        y = torch.empty_like(u)  # (B, L, ED) in u's dtype
        outputs = {"y": y}
        if needs_grad:
            outputs["ckpt"] = u.new_empty(batch, triton.cdiv(length, tt), ed, n, dtype=cdt)
        refs = list(probe.references.items()) if probe is not None else []
        if probe is not None:
            stat = lambda: u.new_empty(batch, length, ed, dtype=cdt)  # noqa: E731
            outputs.update(delta=stat(), sumsq=stat(), maxabs=stat())
            if probe.keep_states:
                outputs["states"] = u.new_empty(batch, length, ed, n, dtype=cdt)
            for name, _ in refs:
                probe.delta_sumsq[name], probe.delta_maxabs[name] = stat(), stat()
            if refs:  # the first reference rides along in the main pass
                outputs.update(dsumsq=probe.delta_sumsq[refs[0][0]], dmaxabs=probe.delta_maxabs[refs[0][0]])
        _launch_forward(args, refs[0][1] if refs else None, zoh, cdt, cfg, outputs)
        for name, ref in refs[1:]:  # each further reference: a probe-only pass (recomputes x)
            _launch_forward(args, ref, zoh, cdt, cfg,
                        {"dsumsq": probe.delta_sumsq[name], "dmaxabs": probe.delta_maxabs[name]})
        if probe is not None:
            probe.state_sumsq, probe.state_maxabs = outputs["sumsq"], outputs["maxabs"]
            probe.states = outputs.get("states")
            work = [t.detach().to(cdt) for t in (u, A, B, C)]
            probe.inputs = ScanInputs(work[0], outputs["delta"], *work[1:], disc)
        if needs_grad:
            ctx.save_for_backward(*args, outputs["ckpt"])
        ctx.disc, ctx.probe, ctx.cfg, ctx.cdt = disc, probe, cfg, cdt
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        u, dt, A, B, C, D, dt_bias, ckpt = ctx.saved_tensors
        probe, cdt = ctx.probe, ctx.cdt
        block_ed, n_pad, tt, num_warps = ctx.cfg
        batch, length, ed = u.shape
        n = A.shape[1]
        n_eb = triton.cdiv(ed, block_ed)
        grad_y = grad_y.contiguous()
        scratch = u.new_empty(batch * n_eb * tt * block_ed * n_pad, dtype=cdt)
        grad_u, grad_dt = torch.empty_like(u), torch.empty_like(dt)
        part_A = u.new_empty(batch, ed, n, dtype=cdt)
        atomic = not DETERMINISTIC
        if atomic:  # (B, L, N), accumulated by every channel block
            part_B = u.new_zeros(batch, 1, length, n, dtype=cdt)
            part_C = u.new_zeros(batch, 1, length, n, dtype=cdt)
        else:  # (B, N_EB, L, N), one slice per channel block
            part_B = u.new_empty(batch, n_eb, length, n, dtype=cdt)
            part_C = u.new_empty(batch, n_eb, length, n, dtype=cdt)
        part_D = u.new_empty(batch, ed, dtype=cdt)
        part_bias = u.new_empty(batch, ed, dtype=cdt)
        want_grad = probe is not None and probe.want_grad
        gsumsq = u.new_empty(batch, length, ed, dtype=cdt) if want_grad else scratch
        _scan_bwd_kernel[(batch, n_eb)](
            u, dt, A, B, C, D, dt_bias, grad_y, ckpt, scratch,
            grad_u, grad_dt, part_A, part_B, part_C, part_D, part_bias, gsumsq,
            length, ed, n, n_eb,
            CDT=_TL_DTYPE[cdt], F64=cdt == torch.float64, BLOCK_ED=block_ed, N_PAD=n_pad, TT=tt,
            ZOH=ctx.disc == Discretization.ZOH, WANT_GRAD=want_grad, ATOMIC_BC=atomic, num_warps=num_warps,
        )
        if want_grad:
            probe.grad_sumsq = gsumsq
        return (
            grad_u,
            grad_dt,
            part_A.sum(0).to(A.dtype),  # (ED, N)
            part_B.sum(1).to(B.dtype),  # (B, L, N)
            part_C.sum(1).to(C.dtype),
            part_D.sum(0).to(D.dtype),  # (ED,)
            part_bias.sum(0).to(dt_bias.dtype),
            None,
            None,
            None,
        )


def scan_triton(
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
    """Triton S6 scan; see ssm.scan.selective_scan for shapes. y: (B, L, ED) in u's dtype.

    Computes in fp32 (fp64 for fp64 inputs) whatever the input dtype; differentiable in every
    input (once). Fills `probe` (if given) as described in ssm.scan.StateProbe.
    """
    _check_inputs(u, dt, A, B, C, D, dt_bias)
    inputs = (u, dt, A, B, C, D, dt_bias)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    return _TritonScanFn.apply(*inputs, Discretization(discretization), probe, needs_grad)
