#!/usr/bin/env python3
"""Pack the app's code into a reproducible release archive, on the Ansible controller.

    build_release.py REPO_ROOT OUT_DIR

Takes src/ (without __pycache__, *.pyc, *.egg-info), pyproject.toml and requirements.txt; every entry
gets a fixed owner, mode class and time, in name order, so the same code always gives the same bytes
and the same release name. Prints JSON: {"archive", "sha256", "version", "release"}.
Standard library only (any Python 3.8+ that runs Ansible).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile
from pathlib import Path

FILES = ("pyproject.toml", "requirements.txt")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")
MTIME = 946684800  # 2000-01-01: wheels cannot hold times before 1980


def entries(root: Path) -> list[Path]:
    found = [root / name for name in FILES]
    for folder, dirs, files in os.walk(root / "src"):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        found += [Path(folder) / f for f in files if not f.endswith(SKIP_SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def build(root: Path) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        added_dirs: set[str] = set()
        for path in entries(root):
            rel = path.relative_to(root).as_posix()
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):  # parent folders first, each once
                folder = "/".join(parts[:i])
                if folder not in added_dirs:
                    added_dirs.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
                    tar.addfile(info)
            info = tarfile.TarInfo(rel)
            data = path.read_bytes()
            info.size, info.mtime = len(data), MTIME
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    match = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    version = match.group(1) if match else "0"
    data = build(root)
    digest = hashlib.sha256(data).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    release = f"{version}-{digest[:12]}"
    archive = out / f"mes-{release}.tar.gz"
    if not archive.exists() or archive.read_bytes() != data:
        tmp = archive.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(archive)
    print(json.dumps({"archive": str(archive), "sha256": digest, "version": version, "release": release}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
