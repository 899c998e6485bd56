"""Webhooks seen from outside the topology, for its tests: a receiver on plain http on 127.0.0.1 (the local stack
allows loopback), a stream of create-and-cancel through the public API, and what arrived, signature checked."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from stackutil import NEW_ORDER, Stack, api
from standardwebhooks.webhooks import Webhook


class Receiver:
    """Plain http on 127.0.0.1: answers 200 to every POST and keeps (webhook-id, headers, body). After
    `hold_next()` the next request is kept and its answer held back a few seconds (`held` is set meanwhile)."""

    def __init__(self):
        self.received: list[tuple[str, dict, bytes]] = []
        self.lock = threading.Lock()
        self.hold, self.held, self.held_id = False, threading.Event(), ""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if len(body) < length:   # the sender died mid-request (the killed worker): nothing delivered
                    return
                with receiver.lock:
                    receiver.received.append((self.headers.get("webhook-id", ""), dict(self.headers), body))
                    hold, receiver.hold = receiver.hold, False
                if hold:
                    receiver.held_id = self.headers.get("webhook-id", "")
                    receiver.held.set()
                    time.sleep(5)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the held request's worker was killed meanwhile
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold_next(self) -> None:
        with self.lock:
            self.hold = True

    def snapshot(self) -> list[tuple[str, dict, bytes]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CancelStream:
    """One order created and cancelled after another, through the public API; remembers the orders whose
    cancel was acknowledged (2xx) and when the last one was."""

    def __init__(self, stack: Stack, headers: dict, prefix: str):
        self.stack, self.headers, self.prefix = stack, headers, prefix
        self.acknowledged: dict[int, float] = {}    # order id -> when its cancel answered 2xx
        self.failures: Counter = Counter()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CancelStream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def _post(self, path: str, key: str, body: dict) -> requests.Response | None:
        try:
            return api(self.stack, "POST", path, {**self.headers, "Idempotency-Key": key}, json=body)
        except requests.RequestException as err:
            self.failures[type(err).__name__] += 1
            return None

    def _run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            ref = f"WH-{self.prefix}-{n}"
            created = self._post("/orders", ref, {**NEW_ORDER, "reference": ref})
            if created is None or created.status_code != 201:
                self.failures[created.status_code if created is not None else "error"] += 1
                time.sleep(0.2)
                continue
            order_id = created.json()["id"]
            cancelled = self._post(f"/orders/{order_id}/cancel", f"{ref}-cancel", {"reason": "test stream"})
            if cancelled is not None and 200 <= cancelled.status_code < 300:
                self.acknowledged[order_id] = time.monotonic()
            else:
                self.failures[cancelled.status_code if cancelled is not None else "error"] += 1
            time.sleep(0.1)

    def acknowledged_since(self, since: float) -> bool:
        return any(at > since for at in list(self.acknowledged.values()))


def delivered_orders(receiver: Receiver, secret: str) -> tuple[dict[int, set[str]], Counter]:
    """order id -> the webhook-ids of its status changes to cancelled; webhook-id -> times received. Each
    delivery's signature is checked with the standardwebhooks library."""
    orders: dict[int, set[str]] = {}
    times: Counter = Counter()
    for msg_id, headers, body in receiver.snapshot():
        Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
        payload = json.loads(body)
        times[msg_id] += 1
        if payload["type"] == "order.status_changed" and payload["data"]["to_status"] == "cancelled":
            orders.setdefault(payload["data"]["order_id"], set()).add(msg_id)
    return orders, times
