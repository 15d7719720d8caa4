"""Compiled CPU selective scan: a small C library, built on first use, called through ctypes.

Why C through ctypes (and not numba, or a torch C++ extension): the scan is bound by
B·L·ED·N exponentials, so it needs a vectorised exp. A C loop with `#pragma omp simd` over N
and an exp of our own (a Cody–Waite reduction and a Taylor polynomial, csrc/scan.c) vectorises
with any gcc/clang, in fp32 and fp64, with no -ffast-math (NaN and Inf keep their meaning, which
divergence detection needs) and gives expm1 from the same reduction (ZOH's κ = expm1(ΔA)/A
stays accurate as ΔA → 0). numba on this platform has no vectorised exp (no SVML) and would
add a dependency and a JIT per process; a torch C++ extension needs a C++ toolchain, the torch
headers and a minute of build. `cc` and ctypes are everywhere torch runs on Linux and macOS.

What it computes: one (batch, channel) pair keeps its N state values in cache while time
advances (csrc/scan_kernel.h); nothing of size B·L·ED·N is ever materialised. Forward writes the
readout Σ_n C x, the probe sums (Σ_n x², max_n |x|, and for every reference of a StateProbe its
own recurrence in the same pass over time with Σ_n (x − x_ref)² and max_n |x − x_ref|) and, when
a gradient is needed, the state at every chunk start. Backward recomputes each chunk's states
from its start state and runs the adjoint g_t = C_t ∂L/∂y_t + Ā_{t+1} g_{t+1} backwards with
the same formulas as ssm.scan.fast (and Σ_n g² for the probe). ZOH and Euler, float32 and
float64 (float16/bfloat16 are computed in float32). Parallel over blocks of channels with POSIX
threads (not OpenMP: torch carries its own libgomp).

Build. On first use `cc` (env SSMSCOPE_CC, else CC, else `cc`) compiles csrc/scan.c with
`-O3 -march=native -fopenmp-simd -fno-math-errno -fno-trapping-math -ffp-contract=fast` into the cache folder
(env SSMSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/ssmscope, else ~/.cache/ssmscope), named by a hash
of the sources, the flags, the compiler's version and the CPU; the build writes a temporary file
and renames it, so concurrent worker processes never load a half-written library. If there is
no compiler or the build fails, `load_library` raises ImportError with a one-line reason, and
`scan=auto` falls back to the fast torch scan (ssm.scan.dispatch logs it once).

Threads: SSMSCOPE_SCAN_THREADS if set, else torch.get_num_threads() (a sweep's local workers
set that to cores / workers, so two workers on two cores use one thread each), capped so that
each thread has at least MIN_WORK_PER_THREAD state updates.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ssmscope.ssm.config import Discretization
from ssmscope.ssm.scan.types import ScanInputs, StateProbe, softplus_delta

SOURCES = ("scan.c", "scan_kernel.h", "ssd_probe_kernel.h")
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-std=gnu11",
          "-shared", "-fPIC")
THREAD_FLAGS = (("-fopenmp",), ("-fopenmp-simd",))  # tried in order: OpenMP threads, else one thread
ABI_VERSION = 4
MAX_REFS = 4
MIN_WORK_PER_THREAD = 1 << 18  # B·L·ED·N state updates per thread below which extra threads cost more than they give
THREADS_ENV = "SSMSCOPE_SCAN_THREADS"
CC_ENV = "SSMSCOPE_CC"
CACHE_ENV = "SSMSCOPE_CACHE_DIR"


def source_dir() -> Path:
    return Path(__file__).resolve().parent / "csrc"


def cache_dir() -> Path:
    """Where built libraries live: $SSMSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/ssmscope, else ~/.cache/ssmscope."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ssmscope"


def compiler() -> list[str]:
    """The compiler command: $SSMSCOPE_CC, else $CC, else cc (may hold arguments, split on spaces)."""
    return (os.environ.get(CC_ENV) or os.environ.get("CC") or "cc").split()


def _cpu_id() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU model and flags."""
    parts = [platform.machine()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                parts.append(line)
                if len(parts) >= 3:
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _compiler_version(cc: list[str]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImportError(f"compiled scan unavailable: no C compiler ({' '.join(cc)}: {exc})") from None
    if out.returncode != 0:
        raise ImportError(f"compiled scan unavailable: `{' '.join(cc)} --version` failed") from None
    return out.stdout.splitlines()[0] if out.stdout else ""


def library_path(cc: list[str] | None = None, threads: tuple[str, ...] = THREAD_FLAGS[0]) -> Path:
    """The cached library's path for the current sources, flags, compiler and CPU (built or not)."""
    cc = compiler() if cc is None else cc
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((source_dir() / name).read_bytes())
    h.update(" ".join([*cc, *CFLAGS, *threads, _compiler_version(cc), _cpu_id(), str(ABI_VERSION)]).encode())
    return cache_dir() / f"ssmscope-scan-{h.hexdigest()[:20]}.so"


def _compile(cc: list[str], threads: tuple[str, ...], path: Path) -> None:
    """Compile into a temporary file beside `path`, then rename it there (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=path.parent)
    os.close(fd)
    try:
        cmd = [*cc, *CFLAGS, *threads, "-o", tmp, str(source_dir() / "scan.c")]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ImportError(f"compiled scan unavailable: cannot run {cc[0]} ({exc})") from None
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[0] if lines else f"exit {out.returncode}")
            raise ImportError(f"compiled scan unavailable: the build failed ({first.strip()})")
        os.replace(tmp, path)  # another process sees no library or the whole library, never a part
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(cc: list[str] | None = None, threads: tuple[str, ...] = THREAD_FLAGS[0]) -> Path:
    """Compile the library into the cache unless it is there already; returns its path.

    A failed build leaves a `.failed` marker (with the reason) so that later processes do not
    retry it; delete the cache folder to retry.
    """
    cc = compiler() if cc is None else cc
    path = library_path(cc, threads)
    marker = path.with_suffix(".failed")
    if path.exists():
        return path
    if marker.exists():
        raise ImportError(marker.read_text().strip() or "compiled scan unavailable: an earlier build failed")
    try:
        _compile(cc, threads, path)
    except ImportError as exc:
        try:
            marker.write_text(str(exc) + "\n")
        except OSError:
            pass
        raise
    return path


# ----------------------------------------------------------------------------- ctypes binding

_P = ctypes.c_void_p
_I = ctypes.c_int64


class _FwdArgs(ctypes.Structure):
    _fields_ = [*((n, _I) for n in ("batch", "L", "E", "N", "chunk", "zoh", "nthreads", "nref")),
                *((n, _P) for n in ("u", "delta", "A", "B", "C", "y", "ckpt", "states", "ssq", "mx")),
                ("ref_zoh", _I * MAX_REFS),
                *((n, _P * MAX_REFS) for n in ("ref_u", "ref_delta", "ref_A", "ref_B", "ref_ssq", "ref_mx"))]


class _BwdArgs(ctypes.Structure):
    _fields_ = [*((n, _I) for n in ("batch", "L", "E", "N", "chunk", "zoh", "nthreads", "reserved")),
                *((n, _P) for n in ("u", "delta", "A", "B", "C", "gy", "ckpt", "gu", "gdelta", "gA", "gB", "gC",
                                    "gssq"))]


class SSDProbeFwdArgs(ctypes.Structure):
    """ssd_probe_fwd_args (csrc/scan.c): the SSD probe's forward sums (ssm.scan.ssd_probe)."""

    _fields_ = [*((n, _I) for n in ("batch", "L", "H", "P", "G", "N", "nthreads", "nref")),
                *((n, _P) for n in ("x", "delta", "A", "B", "ssq", "mx")),
                *((n, _P * MAX_REFS) for n in ("ref_x", "ref_delta", "ref_A", "ref_B", "ref_ssq", "ref_mx"))]


class SSDProbeBwdArgs(ctypes.Structure):
    """ssd_probe_bwd_args (csrc/scan.c): the SSD adjoint's sums."""

    _fields_ = [*((n, _I) for n in ("batch", "L", "H", "P", "G", "N", "nthreads", "reserved")),
                *((n, _P) for n in ("gy", "delta", "A", "C", "gssq", "gmx"))]


class Library:
    """The loaded C library: typed entry points per dtype."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        lib.ssm_scan_abi_version.restype = ctypes.c_int
        if lib.ssm_scan_abi_version() != ABI_VERSION:
            raise ImportError(f"compiled scan unavailable: {path} has another ABI version")
        lib.ssm_scan_lanes.restype = ctypes.c_int
        self.lanes = lib.ssm_scan_lanes()
        self.fwd, self.bwd, self.roofline, self.exp_expm1 = {}, {}, {}, {}
        self.ssd_fwd, self.ssd_bwd = {}, {}
        for dtype, sfx in ((torch.float32, "f32"), (torch.float64, "f64")):
            for table, name, argtype in ((self.fwd, "ssm_scan_fwd", _FwdArgs), (self.bwd, "ssm_scan_bwd", _BwdArgs),
                                         (self.roofline, "ssm_roofline", _FwdArgs),
                                         (self.ssd_fwd, "ssd_probe_fwd", SSDProbeFwdArgs),
                                         (self.ssd_bwd, "ssd_probe_bwd", SSDProbeBwdArgs)):
                fn = getattr(lib, f"{name}_{sfx}")
                fn.argtypes = [ctypes.POINTER(argtype)]
                fn.restype = ctypes.c_int
                table[dtype] = fn
            fn = getattr(lib, f"ssm_exp_expm1_{sfx}")
            fn.argtypes = [_P, _P, _P, _I]
            fn.restype = None
            self.exp_expm1[dtype] = fn


_LOCK = threading.Lock()
_LOADED: Library | None = None
_FAILED: ImportError | None = None


def load_library() -> Library:
    """The library, built on first use (once per process; a failure is remembered and re-raised).

    Tries the OpenMP build, then the single-threaded one (a compiler without OpenMP, or a
    libgomp that cannot serve the OpenMP build); raises ImportError with the first reason.
    """
    global _LOADED, _FAILED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        if _FAILED is not None:
            raise _FAILED
        errors: list[ImportError] = []
        for threads in THREAD_FLAGS:
            try:
                _LOADED = Library(build(threads=threads))
                return _LOADED
            except ImportError as exc:
                errors.append(exc)
            except OSError as exc:  # the built file cannot be loaded (e.g. a missing libgomp symbol)
                errors.append(ImportError(f"compiled scan unavailable: cannot load the library ({exc})"))
        _FAILED = errors[0]
        raise _FAILED


def reset() -> None:
    """Forget the loaded library or the remembered failure (tests; a changed compiler setting)."""
    global _LOADED, _FAILED
    with _LOCK:
        _LOADED, _FAILED = None, None


def is_available() -> bool:
    try:
        load_library()
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- the scan

def threads_for(work: int) -> int:
    """Threads for a scan of `work` = B·L·ED·N state updates (see the module docstring)."""
    env = os.environ.get(THREADS_ENV)
    n = int(env) if env else torch.get_num_threads()
    return max(1, min(n, work // MIN_WORK_PER_THREAD))


def chunk_for(n: int) -> int:
    """Time steps between stored chunk starts. Backward recomputes a chunk of a 64-mode tile into
    3 × (T, 64, 8) values (ZOH; 2 for Euler), which stay in L2; checkpoint memory is B·ED·N·(L/T − 1)."""
    return max(16, min(256, 2048 // min(max(n, 1), 64)))


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(rc: int, what: str) -> None:
    if rc == 2:
        raise MemoryError(f"compiled scan: out of memory in {what}")
    if rc != 0:
        raise RuntimeError(f"compiled scan: {what} rejected its arguments (code {rc})")


def _contig(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.detach().to(dtype).contiguous()


class _CompiledScanFn(torch.autograd.Function):
    """u, Δ: (B, L, E); A: (E, N); B, C: (B, L, N), contiguous, one dtype. Returns Σ_n C x: (B, L, E)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, disc: Discretization, probe: StateProbe | None):
        lib = load_library()
        batch, L, E = u.shape
        N = A.shape[1]
        zoh = disc == Discretization.ZOH
        need_grad = any(ctx.needs_input_grad[:5])
        T = chunk_for(N)
        n_ckpt = (L + T - 1) // T - 1
        nthreads = threads_for(batch * L * E * N)
        new = u.new_empty
        y = new(batch, L, E)
        blocks = -(-E // lib.lanes)
        ckpt = new(blocks, batch, n_ckpt, N, lib.lanes) if need_grad and n_ckpt > 0 else None
        args = _FwdArgs(batch=batch, L=L, E=E, N=N, chunk=T, zoh=int(zoh), nthreads=nthreads, nref=0,
                        u=u.data_ptr(), delta=delta.data_ptr(), A=A.data_ptr(), B=B.data_ptr(), C=C.data_ptr(),
                        y=y.data_ptr(), ckpt=_ptr(ckpt))
        keep = []  # the converted reference inputs stay alive for the call
        if probe is not None:
            probe.state_sumsq, probe.state_maxabs = new(batch, L, E), new(batch, L, E)
            args.ssq, args.mx = probe.state_sumsq.data_ptr(), probe.state_maxabs.data_ptr()
            if probe.keep_states:
                probe.states = new(batch, L, E, N)
                args.states = probe.states.data_ptr()
            if len(probe.references) > MAX_REFS:
                raise ValueError(f"the compiled scan takes at most {MAX_REFS} probe references")
            for i, (name, ref) in enumerate(probe.references.items()):
                r_u, r_delta, r_A, r_B = (_contig(t, u.dtype) for t in (ref.u, ref.delta, ref.A, ref.B))
                if r_u.shape != u.shape or r_A.shape != A.shape or r_B.shape != B.shape:
                    raise ValueError(f"probe reference {name!r} has other shapes than the scan")
                keep.append((r_u, r_delta, r_A, r_B))
                probe.delta_sumsq[name], probe.delta_maxabs[name] = new(batch, L, E), new(batch, L, E)
                args.ref_zoh[i] = int(Discretization(ref.discretization) == Discretization.ZOH)
                args.ref_u[i], args.ref_delta[i] = r_u.data_ptr(), r_delta.data_ptr()
                args.ref_A[i], args.ref_B[i] = r_A.data_ptr(), r_B.data_ptr()
                args.ref_ssq[i] = probe.delta_sumsq[name].data_ptr()
                args.ref_mx[i] = probe.delta_maxabs[name].data_ptr()
                args.nref = i + 1
        _check(lib.fwd[u.dtype](ctypes.byref(args)), "forward")
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, ckpt)
            ctx.zoh, ctx.probe, ctx.chunk = zoh, probe, T
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        lib = load_library()
        u, delta, A, B, C, ckpt = ctx.saved_tensors
        batch, L, E = u.shape
        N = A.shape[1]
        gy = grad_y.to(u.dtype).contiguous()
        new = u.new_empty
        gu, gdelta, gA, gB, gC = new(batch, L, E), new(batch, L, E), new(E, N), new(batch, L, N), new(batch, L, N)
        probe = ctx.probe
        gssq = None
        if probe is not None and probe.want_grad:
            gssq = probe.grad_sumsq = new(batch, L, E)
        args = _BwdArgs(batch=batch, L=L, E=E, N=N, chunk=ctx.chunk, zoh=int(ctx.zoh),
                        nthreads=threads_for(2 * batch * L * E * N), u=u.data_ptr(), delta=delta.data_ptr(),
                        A=A.data_ptr(), B=B.data_ptr(), C=C.data_ptr(), gy=gy.data_ptr(), ckpt=_ptr(ckpt),
                        gu=gu.data_ptr(), gdelta=gdelta.data_ptr(), gA=gA.data_ptr(), gB=gB.data_ptr(),
                        gC=gC.data_ptr(), gssq=_ptr(gssq))
        _check(lib.bwd[u.dtype](ctypes.byref(args)), "backward")
        return gu, gdelta, gA, gB, gC, None, None


def scan_compiled(
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
    """Compiled CPU S6 scan; see ssm.scan.selective_scan for shapes."""
    if u.device.type != "cpu":
        raise ValueError(f"the compiled scan runs on CPU tensors (got {u.device}); use scan=fast or triton")
    disc = Discretization(discretization)
    out_dtype = u.dtype
    work = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype
    delta = softplus_delta(dt.to(work), dt_bias.to(work))  # (B, L, ED)
    u, A, B, C = (t.to(work) for t in (u, A, B, C))
    if probe is not None:
        probe.inputs = ScanInputs(*(t.detach() for t in (u, delta, A, B, C)), disc)
    y = _CompiledScanFn.apply(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                              disc, probe)
    return (u * D.to(work)).add_(y).to(out_dtype)


def exp_expm1(x: Tensor) -> tuple[Tensor, Tensor]:
    """(exp(x), expm1(x)) by the library's vectorised exponential (for tests)."""
    lib = load_library()
    x = x.contiguous()
    e, em1 = torch.empty_like(x), torch.empty_like(x)
    lib.exp_expm1[x.dtype](x.data_ptr(), e.data_ptr(), em1.data_ptr(), x.numel())
    return e, em1


def roofline(delta: Tensor, A: Tensor, B: Tensor, nthreads: int | None = None) -> Tensor:
    """One pass of x ← exp(ΔA) x + B over B·L·ED·N elements (the bench's roofline); returns Σ_n x_L: (B, ED)."""
    lib = load_library()
    batch, L, E = delta.shape
    N = A.shape[1]
    delta, A, B = delta.contiguous(), A.contiguous(), B.contiguous()
    y = delta.new_zeros(batch, L, E)
    n = threads_for(batch * L * E * N) if nthreads is None else nthreads
    args = _FwdArgs(batch=batch, L=L, E=E, N=N, chunk=1, zoh=0, nthreads=n, nref=0, delta=delta.data_ptr(),
                    A=A.data_ptr(), B=B.data_ptr(), y=y.data_ptr())
    _check(lib.roofline[delta.dtype](ctypes.byref(args)), "roofline")
    return y[:, 0]
