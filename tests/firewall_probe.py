"""Real packets through a firewall ruleset, for tests/test_ansible.py. Runs inside network namespaces
that the test makes (`ip netns exec NS python firewall_probe.py ...`); nothing here leaves them.

  listen PORT...        TCP listeners on every port (IPv4 and IPv6) and a raw VRRP (IP protocol 112)
                        socket; prints "ready", then one line "vrrp <source>" per VRRP packet received
  probe JSON            tries each check of the JSON list, prints the outcomes as JSON:
                        {"src", "dst", "port", "proto": tcp|vrrp|icmp} -> "open" (connected, or an echo
                        reply), "closed" (refused: the packet got in, nothing listens), "filtered" (no
                        answer: dropped), "sent" (VRRP: the listener tells whether it arrived)
"""
from __future__ import annotations

import ipaddress
import json
import os
import selectors
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

VRRP = 112
TIMEOUT = 1.0


def listen(ports: list[int]) -> None:
    """Accept and close every connection; report each VRRP packet's source (only what the filter let in
    reaches a raw socket: raw delivery comes after the input hook)."""
    selector = selectors.DefaultSelector()
    for port in ports:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("::", port))
        server.listen(64)
        selector.register(server, selectors.EVENT_READ, "tcp")
    vrrp = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP)
    selector.register(vrrp, selectors.EVENT_READ, "vrrp")
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "tcp":
                conn, _ = key.fileobj.accept()
                conn.close()
            else:
                packet, (source, _) = key.fileobj.recvfrom(2048)
                print(f"vrrp {source}", flush=True)


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def probe_tcp(src: str, dst: str, port: int) -> str:
    with socket.socket(_family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.bind((src, 0))
        try:
            s.connect((dst, port))
            return "open"
        except ConnectionRefusedError:
            return "closed"
        except (socket.timeout, TimeoutError):
            return "filtered"


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def probe_icmp(src: str, dst: str) -> str:
    """An echo request; "open" when the reply comes back (the kernel answers pings itself)."""
    v6 = _family(dst) == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    ident = os.getpid() & 0xFFFF
    with socket.socket(_family(dst), socket.SOCK_RAW, proto) as s:
        s.settimeout(TIMEOUT)
        s.bind((src, 0))
        kind, reply = (128, 129) if v6 else (8, 0)
        header = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"mes-firewall-probe"
        if not v6:      # the kernel fills in ICMPv6 checksums
            header = header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
        s.sendto(header, (dst, 0))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                data, (source, *_) = s.recvfrom(2048)
            except (socket.timeout, TimeoutError):
                break
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            if source == dst and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                return "open"
    return "filtered"


def probe_vrrp(src: str, dst: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP) as s:
        s.bind((src, 0))
        s.sendto(bytes([0x31, 1, 100, 1, 0, 100, 0, 0]) + socket.inet_aton(dst), (dst, 0))
    return "sent"


def probe(check: dict) -> str:
    if check["proto"] == "tcp":
        return probe_tcp(check["src"], check["dst"], int(check["port"]))
    if check["proto"] == "icmp":
        return probe_icmp(check["src"], check["dst"])
    return probe_vrrp(check["src"], check["dst"])


def main(argv: list[str]) -> int:
    if argv[0] == "listen":
        listen([int(p) for p in argv[1:]])
        return 0
    checks = json.loads(argv[1])
    with ThreadPoolExecutor(max_workers=32) as pool:
        print(json.dumps(list(pool.map(probe, checks))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
