"""The app's Python dependencies for hosts that reach no package index (the test hosts reach only the
Debian mirror): wheels downloaded on this machine with its own pip, cached by requirements.txt, and
handed to the mes_app role as `mes_app_wheelhouse` (it copies them and runs pip --no-index)."""
from __future__ import annotations

import hashlib
import platform
import shutil
import sys
from pathlib import Path

from .util import run, timed

PYTHON_VERSION = "3.11"            # Debian 12's python3


def pip_download_args(requirements: Path) -> list[str]:
    # async-timeout: redis needs it on the hosts' Python 3.11.2 (< 3.11.3), a marker that pip evaluates
    # against this machine's Python, not the target's, so it is named here.
    return ["download", "--quiet", "-r", str(requirements), "setuptools", "wheel", "async-timeout>=4.0.3",
            "--only-binary=:all:",
            "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--platform", f"manylinux2014_{platform.machine()}"]


def ensure_wheelhouse(repo: Path, cache_dir: Path) -> Path:
    requirements = repo / "requirements.txt"
    args = pip_download_args(requirements)
    key = hashlib.sha256((requirements.read_text() + repr(args[:1] + args[4:])).encode()).hexdigest()[:16]
    target = cache_dir / f"wheels-{key}"
    if (target / ".complete").exists():
        return target
    with timed("wheelhouse: pip download of requirements.txt"):
        partial = cache_dir / f"wheels-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        run([sys.executable, "-m", "pip", *args, "-d", str(partial)], timeout=900)
        (partial / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in cache_dir.glob("wheels-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target
