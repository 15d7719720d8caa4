"""Sweeps: specs, the training corpus, the worker (one run → one shard), executors, resume and retries.

Imports torch only inside the worker; the worker path imports torch, numpy and pyarrow only.
"""
