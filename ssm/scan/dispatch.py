"""Backend choice: `selective_scan` runs the S6 recurrence on the backend a name (or AUTO) picks.

The backends (reference, fast, triton, compiled) import only ssm.scan.types and ssm.scan.discretize;
this module imports them lazily, so a missing optional backend (triton; compiled without a C
compiler) costs nothing until chosen.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ssmscope.ssm.config import Discretization, ScanBackend
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.scan.types import ScanFn, StateProbe

log = logging.getLogger(__name__)


def _load_backend(name: ScanBackend) -> ScanFn:
    if name == ScanBackend.REFERENCE:
        from ssmscope.ssm.scan.reference import scan_reference

        return scan_reference
    if name == ScanBackend.FAST:
        from ssmscope.ssm.scan.fast import scan_fast

        return scan_fast
    if name == ScanBackend.TRITON:
        try:
            from ssmscope.ssm.scan.triton import scan_triton
        except ImportError as exc:  # triton missing, or the backend not built yet
            raise ConfigError(
                f"scan=triton is unavailable ({exc}); use scan=fast (the torch scan) instead"
            ) from None
        return scan_triton
    if name == ScanBackend.COMPILED:
        from ssmscope.ssm.scan.compiled import load_library, scan_compiled

        try:
            load_library()
        except ImportError as exc:  # no C compiler, or the build failed
            raise ConfigError(f"scan=compiled is unavailable ({exc}); use scan=fast instead") from None
        return scan_compiled
    raise ConfigError(f"scan={name!r}; allowed: {', '.join(b.value for b in ScanBackend)}")


_announced: set[tuple[str, str]] = set()
_triton_checks: dict[str, str | None] = {}
"""Device type → why the Triton scan failed its check there (None: it passed); each device type checked once."""
GPU_TYPES = ("cuda",)
"""Device types on which AUTO considers the Triton scan (the tests add "cpu" to run the check under Triton's
interpreter)."""


def triton_check(device: torch.device) -> str | None:
    """Why AUTO must not use the Triton scan on `device`, or None: ssm.scan.verify's comparison with the fast scan,
    run once per process and device type (its result is kept)."""
    if device.type not in _triton_checks:
        from ssmscope.ssm.scan.verify import triton_problem

        _triton_checks[device.type] = triton_problem(device)
    return _triton_checks[device.type]


def resolve_backend(name: ScanBackend | str, device: torch.device) -> ScanBackend:
    """AUTO → triton on CUDA when it imports and passes its check, compiled on CPU when it builds, else fast.

    On CUDA the Triton kernels are verified once per process against the fast scan (ssm.scan.verify: the output,
    every gradient and the fused state-norm probes on a small input); an exception or a difference beyond the
    stated tolerance makes AUTO use fast. Logs the automatic choice once per process and device type; a fallback
    is one warning line saying why.
    """
    name = ScanBackend(name)
    if name != ScanBackend.AUTO:
        return name
    chosen, why = ScanBackend.FAST, ""
    if device.type in GPU_TYPES:
        try:
            import ssmscope.ssm.scan.triton  # noqa: F401
        except ImportError as exc:
            why = f"triton scan unavailable ({exc})"
        else:
            problem = triton_check(device)
            if problem is None:
                chosen = ScanBackend.TRITON
            else:
                why = f"the Triton scan disagrees with the fast scan in its check ({problem})"
    elif device.type == "cpu":
        from ssmscope.ssm.scan.compiled import load_library

        try:
            load_library()
            chosen = ScanBackend.COMPILED
        except ImportError as exc:
            why = str(exc)
    key = (device.type, chosen.value)
    if key not in _announced:
        _announced.add(key)
        if why:
            log.warning("scan=auto on %s → %s: %s", device.type, chosen.value, why)
        else:
            log.info("scan=auto on %s → %s", device.type, chosen.value)
    return chosen


def backend_that_runs(name: ScanBackend | str, device: torch.device) -> str:
    """The backend a scan asked for as `name` runs on `device` (AUTO resolved), for a run's record: a run stores
    what computed it (`compiled`, `fast`, `triton`), not `auto`. An unknown name is returned as given."""
    try:
        return resolve_backend(name, device).value
    except ValueError:
        return str(name)


_BACKENDS: dict[ScanBackend, ScanFn] = {}


def get_backend(name: ScanBackend | str, device: torch.device) -> ScanFn:
    """The scan function for a backend name (AUTO resolved for the device)."""
    resolved = resolve_backend(name, device)
    if resolved not in _BACKENDS:
        _BACKENDS[resolved] = _load_backend(resolved)
    return _BACKENDS[resolved]


def selective_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    *,
    discretization: Discretization | str,
    backend: ScanBackend | str = ScanBackend.AUTO,
    probe: StateProbe | None = None,
) -> Tensor:
    """Run the S6 recurrence.

    u, dt: (B, L, ED); A: (ED, N) (negative); B, C: (B, L, N); D, dt_bias: (ED,).
    Returns y: (B, L, ED) in u's dtype.
    """
    fn = get_backend(backend, u.device)
    return fn(u, dt, A, B, C, D, dt_bias, Discretization(discretization), probe)


