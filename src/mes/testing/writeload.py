"""Counted order creation against the public API, for fault tests and benchmarks: a steady rate of
`POST /api/v1/orders` from a few threads, each request remembered with its answer, so that a test can
say afterwards which orders were acknowledged (201) and check that every one of them survived."""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

import requests

ORDER = {"product": "BRKT-200", "material": "steel S235", "quantity": 5}


@dataclass
class Attempt:
    reference: str
    started: float            # time.monotonic()
    finished: float
    status: int               # HTTP status, 0 when no answer arrived
    order_id: int | None = None


@dataclass
class WriteLoad:
    """`rate` creates per second over `threads` threads until stop(). Each create carries an
    Idempotency-Key and is sent once (no retries): what a client was told is what it got."""

    base_url: str
    headers: dict
    rate: float = 25.0
    threads: int = 4
    timeout: float = 30.0
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._workers: list[threading.Thread] = []

    def start(self) -> "WriteLoad":
        interval = self.threads / self.rate
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, args=(interval,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> "WriteLoad":
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        return self

    def _run(self, interval: float) -> None:
        session = requests.Session()
        next_at = time.monotonic()
        while not self._stop.is_set():
            reference = f"W-{self.prefix}-{next(self._seq)}"
            started = time.monotonic()
            status, order_id = 0, None
            try:
                r = session.post(f"{self.base_url}/api/v1/orders", json={**ORDER, "reference": reference},
                                 headers={**self.headers, "Idempotency-Key": reference}, timeout=self.timeout)
                status = r.status_code
                if status == 201:
                    order_id = r.json()["id"]
            except requests.RequestException:
                session = requests.Session()
            with self._lock:
                self.attempts.append(Attempt(reference, started, time.monotonic(), status, order_id))
            next_at = max(next_at + interval, time.monotonic() - interval)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    # --- what happened ---------------------------------------------------------------------------
    def acknowledged(self) -> dict[str, int]:
        """reference -> order id of every create answered 201."""
        return {a.reference: a.order_id for a in self.attempts if a.status == 201}

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for a in self.attempts:
            out[a.status] = out.get(a.status, 0) + 1
        return out

    def write_gap(self, after: float) -> float | None:
        """Seconds from `after` (time.monotonic()) until the first create that started after it and
        succeeded; None if none did."""
        ok = [a.finished for a in self.attempts if a.status == 201 and a.started >= after]
        return (min(ok) - after) if ok else None

    def longest_outage(self) -> float:
        """The longest time between two successful creates (finish to finish)."""
        done = sorted(a.finished for a in self.attempts if a.status == 201)
        return max((b - a for a, b in zip(done, done[1:])), default=0.0)
