"""The store: the one schema of every column, per-run Parquet shards, and the DuckDB database.

Importing this package loads nothing heavy: `shards` and `schema` need pyarrow only (the worker
path); `db` and `queries` are for the submitting side and the dashboard.
"""
