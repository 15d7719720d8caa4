"""Ingest while a sweep runs, so the dashboard shows results before the sweep ends.

Finished runs (final outcomes: completed, diverged, or failed after their last retry) are loaded
in small batches: every `every` runs or `interval_s` seconds, whichever comes first. Each round
waits at most `wait_s` for the store; if a reader (the dashboard) or another ingest holds it, the
round is skipped and its runs stay pending for the next one. A storage fault is remembered (the
first message) and the sweep goes on training: its shards are kept either way, and the final
ingest at the end of the sweep loads whatever is left.
"""

from __future__ import annotations

import time
from pathlib import Path

from ssmscope.runs.store.db import IngestReport, StoreError, StoreLocked, ingest

LIVE_EVERY = 8
"""Default: ingest after this many finished runs (0: only at the end of the sweep)."""
LIVE_INTERVAL_S = 30.0
"""Default: or after this many seconds, whichever comes first."""
LIVE_WAIT_S = 2.0
"""How long one round waits for a store held by another process before skipping."""


class LiveIngest:
    """A sweep's ingests while it runs: told each final outcome (`finished`), asked after each poll (`tick`)."""

    def __init__(self, db_path: Path, shard_root: Path, every: int = LIVE_EVERY,
                 interval_s: float = LIVE_INTERVAL_S, wait_s: float = LIVE_WAIT_S):
        self.db_path, self.shard_root = db_path, shard_root
        self.every, self.interval_s, self.wait_s = every, interval_s, wait_s
        self.pending: list[str] = []
        self.last = time.monotonic()
        self.rounds = 0
        self.reports: list[IngestReport] = []
        self.error: str | None = None

    def finished(self, run_id: str) -> None:
        """A run reached its final outcome (its shard is published)."""
        if self.every > 0:
            self.pending.append(run_id)

    def tick(self) -> None:
        """Ingest the pending runs if enough of them, or enough time, has gathered."""
        due = len(self.pending) >= self.every or time.monotonic() - self.last >= self.interval_s
        if not self.pending or not due or self.error is not None:
            return
        self.last = time.monotonic()
        try:
            report = ingest(self.db_path, self.shard_root, run_ids=self.pending, wait_s=self.wait_s)
        except StoreLocked:  # a reader or another ingest has the store: these runs wait for the next round
            return
        except StoreError as exc:  # e.g. the store's disk is full: keep training, the shards are kept
            self.error = str(exc)
            return
        self.rounds += 1
        self.reports.append(report)
        self.pending = []
