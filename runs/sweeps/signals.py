"""SIGTERM handled like SIGINT while a sweep runs: both stop it the same way, and the exit code says which.

`kill`, a cluster's scheduler or a container stop send SIGTERM; Ctrl-C sends SIGINT. Inside
`stop_signals()` both raise a KeyboardInterrupt (SIGTERM as its subclass Terminated), so a sweep
stops scheduling, lets finished runs publish, ingests what is done and stops its workers, then
exits with 128 + the signal's number (130, 143). DuckDB turns an exception raised by a signal
handler mid-query into RuntimeError('Query interrupted'); the log says which signal it was.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt."""


STOP_SIGNALS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}
"""The signals that stop a sweep, and the exception each raises."""


@dataclass
class SignalLog:
    received: int | None = None
    """The last stop signal received (None: none)."""

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)


@contextmanager
def stop_signals() -> Iterator[SignalLog]:
    """For the block: SIGINT and SIGTERM raise (and are logged); outside the main thread, nothing changes."""
    log = SignalLog()
    if threading.current_thread() is not threading.main_thread():
        yield log
        return

    def handler(signum: int, frame: object) -> None:
        log.received = signum
        raise STOP_SIGNALS[signal.Signals(signum)]()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield log
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
