"""Shared by the benchmark scripts (run as `python bench/<name>.py`, so this folder is on sys.path)."""
from __future__ import annotations

import signal


def stop_on_signals() -> None:
    """SIGTERM/SIGHUP end a run like Ctrl-C does, so that its `finally` blocks stop what it started."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
