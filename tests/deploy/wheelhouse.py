"""Python packages for hosts that reach no package index (the test hosts reach only the Debian
mirror), built on this machine with its own pip and cached by their requirements file:
- the app's (`mes_app_wheelhouse`): wheels of requirements.txt for Debian 12's Python 3.11;
- Patroni's (`patroni_wheelhouse`): requirements-patroni.txt, built with `pip wheel` by this machine's
  Python 3.11, because two of Patroni's dependencies (python-etcd, ydiff) exist only as source
  packages (both pure Python, so their wheels fit the hosts).
The roles copy the folder and run pip --no-index."""
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
            # Debian 12 has glibc 2.36: wheels for glibc 2.28 and older (manylinux2014 is 2.17) run there.
            "--platform", f"manylinux_2_28_{platform.machine()}", "--platform", f"manylinux2014_{platform.machine()}"]


def pip_wheel_args(requirements: Path) -> list[str]:
    return ["wheel", "--quiet", "-r", str(requirements)]


def _cached(cache_dir: Path, name: str, requirements: Path, args: list[str]) -> Path:
    """`pip <args> -d|-w <folder>` once per content of `requirements` and args; the cached folder."""
    key = hashlib.sha256((requirements.read_text() + repr(args[:1] + args[4:])).encode()).hexdigest()[:16]
    target = cache_dir / f"{name}-{key}"
    if (target / ".complete").exists():
        return target
    with timed(f"{name}: pip {args[0]} of {requirements.name}"):
        partial = cache_dir / f"{name}-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        run([sys.executable, "-m", "pip", *args, "-d" if args[0] == "download" else "-w", str(partial)],
            timeout=900)
        (partial / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in cache_dir.glob(f"{name}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target


def ensure_wheelhouse(repo: Path, cache_dir: Path) -> Path:
    requirements = repo / "requirements.txt"
    return _cached(cache_dir, "wheels", requirements, pip_download_args(requirements))


def ensure_patroni_wheelhouse(repo: Path, cache_dir: Path) -> Path:
    if not sys.version.startswith(PYTHON_VERSION + "."):
        raise RuntimeError(f"Patroni's wheels are built with this Python ({sys.version.split()[0]}), "
                           f"which must be the hosts' {PYTHON_VERSION}")
    requirements = repo / "requirements-patroni.txt"
    return _cached(cache_dir, "patroni-wheels", requirements, pip_wheel_args(requirements))
