"""The library: ssmscope from a notebook or a training script, without a sweep spec.

    coord   coord_check: train every width in memory, return the probe frame a sweep would store
    subjects  the model families it trains (ssmscope's MambaLM; transformers' Mamba under the adapter)
    records the run rows and the probe frame of runs made here (the store's own schema)
    figure  coord_figure: the dashboard's coordinate-check figure from a probe frame
    monitor Monitor: the Observer in a user's own training loop, flushed to shards the store ingests

Like runs.cli this sits above everything (it may import app.frames and app.figures, lazily); only the
`ssmscope` package's public names import it. The public API is at the top: `import ssmscope`.
"""
