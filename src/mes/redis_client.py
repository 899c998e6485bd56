"""Redis connections that fail fast: a hung or unreachable Redis must cost a request one short
timeout, then nothing at all for a cool-down, never a stall.

Every client of a process (the status cache, the read-your-writes tracker, the rate limiter's
storage) takes its connections from a `GuardedPool`. All pools of the process share one `Breaker`:
any connection that fails (connect or read timeout, refused, reset) opens it, and while it is open
the pools refuse to hand out connections at once (`RedisSkipped`, a `redis.ConnectionError`, which
every caller already handles). redis-py's own retries are off: by default it retries a failed
command ten times with backoff, which is what turned a hung Redis into 10 s per request.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_NETWORK_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class Breaker:
    """Closed until a failure; then open for `cooldown` seconds, in which callers skip Redis. The
    first call after the cool-down tries Redis again: it closes the breaker by succeeding, or opens it
    for another cool-down by failing."""

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic):
        self.cooldown = cooldown
        self._clock = clock
        self._open_until = 0.0
        self.failures = 0  # how many so far: whoever trusts what Redis holds can tell that it failed since


    @property
    def open(self) -> bool:
        return self._clock() < self._open_until

    def failed(self) -> None:
        self.failures += 1
        self._open_until = self._clock() + self.cooldown


class RedisSkipped(redis.ConnectionError):
    """Redis failed a moment ago: not tried again before the cool-down ends."""


class GuardedConnection(redis.Connection):
    """A connection that reports every network failure to its pool's breaker."""

    breaker: Breaker | None = None

    def connect(self, *args, **kwargs):
        return self._watch(super().connect, *args, **kwargs)

    def send_packed_command(self, *args, **kwargs):
        return self._watch(super().send_packed_command, *args, **kwargs)

    def read_response(self, *args, **kwargs):
        return self._watch(super().read_response, *args, **kwargs)

    def _watch(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except _NETWORK_ERRORS:
            if self.breaker is not None:
                self.breaker.failed()
            raise


class GuardedPool(redis.ConnectionPool):
    """A connection pool that hands out nothing while its breaker is open."""

    def __init__(self, *args, breaker: Breaker, **kwargs):
        super().__init__(*args, **kwargs)
        self.breaker = breaker

    def get_connection(self, *args, **kwargs):
        if self.breaker.open:
            raise RedisSkipped("redis failed moments ago; skipped until the cool-down ends")
        return super().get_connection(*args, **kwargs)

    def make_connection(self):
        connection = super().make_connection()
        connection.breaker = self.breaker
        return connection


def guarded_pool(url: str, *, timeout: float, breaker: Breaker, decode_responses: bool = False) -> GuardedPool:
    """A pool whose connections give up after `timeout` seconds (connect and each read), never retry,
    and share `breaker` with every other pool of the process."""
    return GuardedPool.from_url(url, breaker=breaker, connection_class=GuardedConnection,
                                socket_connect_timeout=timeout, socket_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), health_check_interval=10,
                                decode_responses=decode_responses)


def make_redis(url: str | None, *, timeout: float = 0.25, breaker: Breaker | None = None) -> redis.Redis | None:
    """The app's client (strings in, strings out); None without a URL (the embedded default)."""
    if not url:
        return None
    pool = guarded_pool(url, timeout=timeout, breaker=breaker or Breaker(cooldown=2.0), decode_responses=True)
    return redis.Redis(connection_pool=pool)
