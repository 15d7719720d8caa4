"""probes: observe an ssmscope model without changing its numbers.

`Observer` attaches to a MambaLM (a context manager), arms on logged steps, and returns
records in the long schema of probes.schema. It never plots or stores.

`Observer` loads on first use (PEP 562): the store and the dashboard read `probes.schema`
without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ssmscope.probes.schema import PROBE_COLUMNS, SCHEMA_VERSION, Quantity, Site

if TYPE_CHECKING:
    from ssmscope.probes.observer import Observer

__all__ = ["PROBE_COLUMNS", "SCHEMA_VERSION", "Observer", "Quantity", "Site"]


def __getattr__(name: str) -> Any:
    if name == "Observer":
        from ssmscope.probes.observer import Observer

        globals()["Observer"] = Observer
        return Observer
    raise AttributeError(f"module 'ssmscope.probes' has no attribute {name!r}")
