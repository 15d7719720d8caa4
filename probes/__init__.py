"""probes: observe an ssmscope model without changing its numbers.

`Observer` attaches to a MambaLM (a context manager), arms on logged steps, and returns
records in the long schema of probes.schema. It never plots or stores.

`Mamba2Observer` gives the same records for a Mamba2LM (probes.mamba2); `observer_for(model, **kw)` picks the
observer that fits a model.

`Observer`, `Mamba2Observer` and `observer_for` load on first use (PEP 562): the store and the dashboard read
`probes.schema` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ssmscope.probes.schema import PROBE_COLUMNS, SCHEMA_VERSION, Quantity, Site

if TYPE_CHECKING:
    from ssmscope.probes.mamba2 import Mamba2Observer, observer_for
    from ssmscope.probes.observer import Observer

__all__ = ["PROBE_COLUMNS", "SCHEMA_VERSION", "Mamba2Observer", "Observer", "Quantity", "Site", "observer_for"]


def __getattr__(name: str) -> Any:
    if name == "Observer":
        from ssmscope.probes.observer import Observer

        globals()["Observer"] = Observer
        return Observer
    if name in ("Mamba2Observer", "observer_for"):
        from ssmscope.probes import mamba2

        globals()[name] = getattr(mamba2, name)
        return globals()[name]
    raise AttributeError(f"module 'ssmscope.probes' has no attribute {name!r}")
