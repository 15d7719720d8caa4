"""probes: observe an ssmscope model without changing its numbers.

`Observer` attaches to a MambaLM (a context manager), arms on logged steps, and returns
records in the long schema of probes.schema. It never plots or stores.
"""

from ssmscope.probes.observer import Observer
from ssmscope.probes.schema import PROBE_COLUMNS, SCHEMA_VERSION, Quantity, Site

__all__ = ["PROBE_COLUMNS", "SCHEMA_VERSION", "Observer", "Quantity", "Site"]
