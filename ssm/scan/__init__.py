"""The selective scan: one signature (ssm.scan.types), several backends, and the probe side channel.

    reference   a plain loop over time (any dtype; the test oracle)
    fast        a chunked torch scan with a hand-written backward (CPU default)
    triton      a fused GPU kernel (CUDA default once it matches fast in a check at first use: ssm.scan.verify)
    compiled    a C kernel built on first use, fused with the probes (CPU default when it builds)
`selective_scan` (ssm.scan.dispatch) picks one by name; `auto` picks by device; `backend_that_runs` says
which one a name runs on a device (what a run's record stores).
"""

from ssmscope.ssm.scan.dispatch import backend_that_runs, get_backend, resolve_backend, selective_scan
from ssmscope.ssm.scan.types import ScanFn, ScanInputs, StateProbe, softplus_delta

__all__ = ["ScanFn", "ScanInputs", "StateProbe", "backend_that_runs", "get_backend", "resolve_backend",
           "selective_scan", "softplus_delta"]
