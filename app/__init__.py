"""app: the Streamlit dashboard over the DuckDB store (views only; no math, no torch)."""
