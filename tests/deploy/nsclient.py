"""HTTP clients of the deploy test. They run INSIDE the controller namespace (the harness starts them
with `ip netns exec mesdt-ctl python -m tests.deploy.nsclient ...`) and refuse any address outside the
test subnet. Each command prints one JSON document on stdout.

  request METHOD URL [--header K:V ...] [--json BODY]   one request
  operator-login BASE LOGIN PASSWORD                    the operator UI's login form (CSRF, cookie)
  traffic --out FILE --stop-file FILE [--max-seconds N] [--open-loop] --target NAME,METHOD,URL,RPS[,HEADER...] ...
                                                        steady paced traffic until the stop file exists;
                                                        POST targets create orders, and the result lists
                                                        every acknowledged one (201). --open-loop: each
                                                        request leaves on time on a fresh connection, not
                                                        after the one before, and the result has every
                                                        request's timeline
  flood URL --count N [--threads T] [--source ADDR] [--header K:V ...]
                                                        N GETs as fast as T keep-alive connections go,
                                                        from the local address ADDR; counts per status
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

SUBNET = ipaddress.ip_network("10.213.0.0/24")   # the deploy test's subnet (tests/deploy/cluster.py)
# HTTPS is verified against the CA that Ansible made for this run (role pki, mes_pki_dir): the harness
# names its certificate in REQUESTS_CA_BUNDLE (test_deploy.py, ca_bundle), which requests reads too.


def check_target(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if ipaddress.ip_address(host) not in SUBNET:
        raise SystemExit(f"refusing {url}: only addresses of the test subnet {SUBNET} are allowed")
    return url


def _headers(pairs) -> dict:
    return dict(p.split(":", 1) for p in pairs or [])


def cmd_request(args) -> dict:
    body = json.loads(args.json) if args.json else None
    headers = _headers(args.header)
    if body is not None and args.method in ("POST", "PUT", "PATCH") and "Idempotency-Key" not in headers:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    r = requests.request(args.method, check_target(args.url), headers=headers, json=body, timeout=args.timeout,
                         allow_redirects=False)
    try:
        parsed = r.json()
    except ValueError:
        parsed = None
    return {"status": r.status_code, "headers": dict(r.headers), "json": parsed, "text": r.text[:4000]}


def cmd_operator_login(args) -> dict:
    base = check_target(args.base.rstrip("/"))
    s = requests.Session()
    s.headers["Referer"] = f"{base}/operator/"  # as a browser sends it: the CSRF check over HTTPS wants it
    page = s.get(f"{base}/operator/login", timeout=15)
    token = page.text.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    r = s.post(f"{base}/operator/login", data={"login": args.login, "password": args.password,
                                               "csrf_token": token}, timeout=15, allow_redirects=False)
    queue = s.get(f"{base}/operator/", timeout=15)
    return {"form_status": page.status_code, "login_status": r.status_code,
            "login_location": r.headers.get("Location", ""), "queue_status": queue.status_code,
            "queue_url": queue.url, "queue_has_title": "Orders queue" in queue.text,
            "has_session_cookie": bool(s.cookies),
            "session_cookie_secure": all(c.secure for c in s.cookies)}


class Target:
    def __init__(self, spec: str):
        parts = spec.split(",")
        self.name, self.method, self.url, self.rps = parts[0], parts[1].upper(), check_target(parts[2]), float(parts[3])
        self.headers = _headers(parts[4:])


def cmd_traffic(args) -> dict:
    """One thread per target, each paced at its rate; every answer that is not 2xx (or 3xx for the
    operator UI), and every connection error or timeout, is a lost request. Open loop: the pacing
    thread hands each request to a pool and goes on, so that a request that hangs delays no other."""
    stats: dict[str, Counter] = {}
    failures: list[dict] = []
    acked: list[dict] = []           # every create the service acknowledged (201): none may be lost later
    timeline: list[list] = []        # open loop: [target, sent, done, result] of every request
    lock = threading.Lock()
    started = time.time()
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=64) if args.open_loop else None

    def send(t: Target, n: int, run_id: str, session) -> None:
        headers = dict(t.headers)
        body = None
        if t.method == "POST":
            headers["Idempotency-Key"] = str(uuid.uuid4())
            body = {"reference": f"DT-{t.name}-{run_id}-{n}", "product": "BRKT-200", "material": "steel S235",
                    "quantity": 1}
        if session is None:
            headers["Connection"] = "close"
        at = time.time()
        try:
            r = (session or requests).request(t.method, t.url, headers=headers, json=body, timeout=20,
                                              allow_redirects=False)
            key, ok = str(r.status_code), r.status_code < 400
            detail = r.text[:200] if not ok else ""
        except requests.RequestException as exc:
            key, ok, detail = type(exc).__name__, False, str(exc)[:200]
        done = time.time()
        with lock:
            stats[t.name][key] += 1
            if t.method == "POST" and key == "201":
                acked.append({"reference": body["reference"], "t": round(at - started, 2)})
            if not ok and len(failures) < 50:
                failures.append({"target": t.name, "t": round(at - started, 2), "result": key, "detail": detail})
            if pool is not None:
                timeline.append([t.name, round(at - started, 3), round(done - started, 3), key])

    def worker(t: Target) -> None:
        session = None if pool is not None else requests.Session()
        stats.setdefault(t.name, Counter())
        interval, next_at, n = 1.0 / t.rps, time.monotonic(), 0
        run_id = uuid.uuid4().hex[:8]     # references are unique per partner: one series per run
        while not stop.is_set():
            n += 1
            if pool is not None:
                pool.submit(send, t, n, run_id, None)
            else:
                send(t, n, run_id, session)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()

    threads = [threading.Thread(target=worker, args=(Target(spec),), daemon=True) for spec in args.target]
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.max_seconds
    while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    if pool is not None:
        pool.shutdown(wait=True)     # the requests still out end (answer or timeout) before the count
    total = sum(sum(c.values()) for c in stats.values())
    lost = sum(n for c in stats.values() for code, n in c.items() if not (code.isdigit() and int(code) < 400))
    result = {"seconds": round(time.time() - started, 1), "started_at": started, "total": total, "lost": lost,
              "by_target": {k: dict(v) for k, v in stats.items()}, "failures": failures, "acked": acked,
              "stopped_by": "stop file" if os.path.exists(args.stop_file) else "max-seconds"}
    if pool is not None:
        result["timeline"] = sorted(timeline, key=lambda r: r[1])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


def cmd_flood(args) -> dict:
    """`count` GETs over `threads` keep-alive connections from the local address `source` (another
    address than the other clients', so that its source-address counters are its own)."""
    url = urlsplit(check_target(args.url))
    headers = _headers(args.header)
    statuses: Counter = Counter()
    lock = threading.Lock()
    started = time.monotonic()

    def connect() -> http.client.HTTPConnection:
        source = (args.source, 0) if args.source else None
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=10, source_address=source,
                                               context=ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"]))
        return http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10, source_address=source)

    def worker(share: int) -> None:
        conn = connect()
        try:
            for _ in range(share):
                conn.request("GET", url.path or "/", headers=headers)
                response = conn.getresponse()
                response.read()
                with lock:
                    statuses[str(response.status)] += 1
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = connect()
        finally:
            conn.close()

    shares = [args.count // args.threads + (1 if i < args.count % args.threads else 0) for i in range(args.threads)]
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"statuses": dict(statuses), "seconds": round(time.monotonic() - started, 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nsclient", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("request")
    p.add_argument("method")
    p.add_argument("url")
    p.add_argument("--header", action="append")
    p.add_argument("--json")
    p.add_argument("--timeout", type=float, default=20)
    p = sub.add_parser("operator-login")
    p.add_argument("base")
    p.add_argument("login")
    p.add_argument("password")
    p = sub.add_parser("traffic")
    p.add_argument("--target", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--open-loop", action="store_true")
    p = sub.add_parser("flood")
    p.add_argument("url")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--source")
    p.add_argument("--header", action="append")
    args = parser.parse_args(argv)
    handler = {"request": cmd_request, "operator-login": cmd_operator_login, "traffic": cmd_traffic,
               "flood": cmd_flood}[args.command]
    json.dump(handler(args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
