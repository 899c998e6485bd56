"""Small helpers of the deploy-test harness: timestamped progress, commands, timings."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager

_T0 = time.monotonic()
TIMINGS: dict[str, float] = {}


def log(message: str) -> None:
    """Progress on stderr with wall-clock time and seconds since the harness started."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[deploy-test {stamp} +{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@contextmanager
def timed(name: str):
    """Log the start and the duration of a step, and keep the duration in TIMINGS."""
    log(f"{name} ...")
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = round(time.monotonic() - start, 1)
        log(f"{name}: {TIMINGS[name]} s")


class CommandError(RuntimeError):
    def __init__(self, argv: list[str], result: subprocess.CompletedProcess):
        self.result = result
        out = (result.stdout or "")[-3000:] + (result.stderr or "")[-3000:]
        super().__init__(f"exit {result.returncode}: {shlex.join(argv)}\n{out}")


def run(argv: list[str], check: bool = True, timeout: float | None = 600, quiet: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capture its output as text; raise CommandError when check and it fails."""
    if not quiet:
        log("$ " + shlex.join(argv))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, **kwargs)
    if check and result.returncode != 0:
        raise CommandError(argv, result)
    return result


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Call predicate until it returns a true value (returned) or timeout seconds pass (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
