"""HAProxy's stick tables survive a reload: haproxy/haproxy.cfg.j2 rendered as the local stack renders
it, run by HAProxy in master-worker mode as Debian's unit runs it on the load balancers (`-Ws`), and
reloaded with SIGUSR2, which is what `systemctl reload haproxy` sends. The old process hands its tables
to the new one over the local peer (`peers mes`), so a key over its limit stays limited. No app runs
behind it: the flood goes to a path HAProxy answers itself (404), which the key's counter counts too."""
from __future__ import annotations

import hashlib
import http.client
import re
import signal
import socket
import ssl
import subprocess
import time

import pytest
from stackutil import GROUP_VARS, LAYOUT

from mes.testing.postgres import free_port
from stack.services import HAProxy
from stack.topology import make_ctx

LIMIT = GROUP_VARS["haproxy_key_rate_limit"]


class Running:
    """One HAProxy master-worker on free ports, its admin socket and public port."""

    def __init__(self, folder, ports: dict):
        self.socket = str(folder / "admin.sock")
        self.public = ports["public"]
        # The public frontend speaks TLS: verified against the CA the stack made beside it.
        self.tls = ssl.create_default_context(cafile=str(folder.parent / "pki" / "ca.crt"))
        self.master = subprocess.Popen(["haproxy", "-W", "-db", "-f", str(folder / "haproxy.cfg")], cwd=folder,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.socket)
            s.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        return answer.decode()

    def worker(self) -> int | None:
        try:
            found = re.search(r"^Pid: (\d+)$", self.admin("show info"), re.M)
        except OSError:
            return None
        return int(found.group(1)) if found else None

    def tables_complete(self) -> bool:
        """The worker has learnt its tables (from the peers it has, or given up waiting): only then does a
        reload hand them on (HAProxy waits up to 5 s for that after a start)."""
        found = re.search(r"flags=(0x[0-9a-f]+)", self.admin("show peers"))
        return bool(found) and int(found.group(1), 16) & 0x3 == 0x3

    def key_rate(self, key: str) -> int:
        """http_req_rate of an API key in st_public_key (keyed by the SHA-256 of the key), 0 when absent."""
        digest = hashlib.sha256(key.encode()).hexdigest().upper()
        found = re.search(rf"key={digest} .*http_req_rate\(\d+\)=(\d+)", self.admin("show table st_public_key"))
        return int(found.group(1)) if found else 0

    def get(self, key: str, path: str = "/not-an-api-path") -> tuple[int, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.public, timeout=10, context=self.tls)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def flood(self, key: str, count: int) -> list[int]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.public, timeout=10, context=self.tls)
        statuses = []
        try:
            for _ in range(count):
                conn.request("GET", "/not-an-api-path", headers={"Authorization": f"Bearer {key}"})
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            conn.close()
        return statuses


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture
def haproxy(tmp_path):
    ports = {name: free_port() for name in LAYOUT["ports"]}
    environ = {"MES_STACK_DIR": str(tmp_path), **{f"MES_PORT_{n.upper()}": str(p) for n, p in ports.items()}}
    ctx = make_ctx("split", environ)
    HAProxy().prepare(ctx)
    running = Running(tmp_path / "haproxy", ports)
    try:
        wait_for(running.worker, 15, "HAProxy's runtime API")
        yield running
    finally:
        running.master.terminate()
        running.master.wait(timeout=15)


def test_a_reload_hands_the_stick_tables_to_the_new_process(haproxy):
    wait_for(haproxy.tables_complete, 10, "the worker to have its tables")
    key, other = "mes_peers_flood_key", "mes_peers_calm_key"
    statuses = haproxy.flood(key, LIMIT + 10)
    assert statuses[0] == 404 and statuses[-1] == 429, statuses[-20:]
    assert haproxy.key_rate(key) >= LIMIT + 10
    old = haproxy.worker()

    haproxy.master.send_signal(signal.SIGUSR2)          # systemctl reload haproxy
    wait_for(lambda: haproxy.worker() not in (None, old), 15, "a new worker")
    wait_for(lambda: haproxy.key_rate(key) > LIMIT, 10, "the new worker to have the key's counter")

    status, body = haproxy.get(key, "/api/v1/orders")
    assert status == 429 and "key-rate" in body, body
    assert haproxy.get(other)[0] == 404                 # another key is not limited
