"""runs: orchestrates sweeps, stores and analyses their results (and holds the CLI)."""
