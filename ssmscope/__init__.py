"""ssmscope: signal-propagation diagnostics for width scaling of selective state-space models.

The installed distribution exposes the repository's packages only under this namespace:

    ssmscope.ssm      the model, its parameterizations (presets) and the selective scans
    ssmscope.probes   the Observer: statistics from inside the scan, per layer and step
    ssmscope.runs     sweeps, the DuckDB store, the analyses (slopes, transfer) and the CLI
    ssmscope.app      the Streamlit dashboard

Importing `ssmscope` is cheap: nothing heavy (torch, polars, duckdb, streamlit) is loaded until an
attribute that needs it is used.
"""

from __future__ import annotations

__version__ = "0.1.0"
