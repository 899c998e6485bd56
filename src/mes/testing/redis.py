"""A throwaway Redis server on loopback for the tests (no persistence, its own folder)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from .postgres import free_port


@dataclass
class RedisServer:
    port: int
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart after stop) on the same port: a restarted Redis is empty."""
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "yes"]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "redis", "--", *argv]
        self.process = subprocess.Popen(argv, stdout=(self.folder / "redis.log").open("ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 30  # a loaded machine (2 cores, the whole suite) can be slow to fork
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer:\n" + (self.folder / "redis.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)  # a paused server cannot exit
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        self.process = None

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)


@contextmanager
def temporary_redis() -> Iterator[RedisServer]:
    folder = Path(tempfile.mkdtemp(prefix="mes-redis-"))
    folder.chmod(0o777)
    server = RedisServer(free_port(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
