"""The app against a real Redis that hangs (SIGSTOP): every Redis client has a short timeout and a
circuit breaker, so a hung Redis costs a request at most one timeout, and no 5xx."""
from __future__ import annotations

import time

import pytest
import redis
from conftest import auth, create_order

from mes import create_app
from mes.domain.rate_budget import share_of_limit
from mes.redis_client import Breaker, RedisSkipped, guarded_pool, make_redis
from mes.testing.postgres import free_port
from mes.testing.redis import temporary_redis


@pytest.fixture(scope="module")
def redis_server():
    with temporary_redis() as server:
        yield server


@pytest.mark.postgresql_only  # read-your-writes (the third Redis client) runs on PostgreSQL only
def test_a_hung_redis_costs_a_request_at_most_one_timeout(backend, redis_server, accounts_):
    settings = backend.settings(redis_url=redis_server.url, read_your_writes=True, redis_timeout=0.2,
                                redis_cooldown=0.5)
    app = create_app(settings)
    client = app.test_client()
    partner = accounts_.partner()
    oid = create_order(client, partner, key="before").get_json()["id"]
    redis_server.pause()
    try:
        durations, codes = [], []
        for i in range(12):  # the status cache, the write tracker and the rate limiter all meet the hang
            for method, path, kwargs in (
                    ("GET", "/api/v1/orders", {}),
                    ("GET", f"/api/v1/orders/{oid}", {}),
                    ("GET", f"/api/v1/orders/{oid}/status", {}),
                    ("POST", "/api/v1/orders", {"json": {"reference": f"H-{i}", "product": "P", "material": "M",
                                                         "quantity": 1}, "headers": {"Idempotency-Key": f"h{i}"}})):
                headers = {**auth(partner), **kwargs.pop("headers", {})}
                started = time.monotonic()
                codes.append(client.open(path, method=method, headers=headers, **kwargs).status_code)
                durations.append(time.monotonic() - started)
    finally:
        redis_server.resume()
        app.extensions["mes_engine"].dispose()
        time.sleep(settings.redis_cooldown)  # the shared limiter's teardown needs Redis
    assert set(codes) <= {200, 201}, codes
    # Most requests skip Redis while the breaker is open; the slowest waited one timeout (connect or read)
    # plus its work, which a busy machine can stretch. redis-py's retries, which this guards against, cost
    # ten timeouts and more.
    durations.sort()
    median, slowest = durations[len(durations) // 2], durations[-1]
    assert median < settings.redis_timeout, (median, slowest)
    assert slowest < settings.redis_timeout * 2 + 1.0, (median, slowest)


def test_the_breaker_opens_on_a_failure_for_the_cool_down_only():
    now = [100.0]
    breaker = Breaker(cooldown=2.0, clock=lambda: now[0])
    assert not breaker.open
    breaker.failed()
    assert breaker.open
    now[0] += 1.9
    assert breaker.open
    now[0] += 0.2
    assert not breaker.open  # the next call tries Redis again


def test_a_refused_connection_opens_the_breaker_and_later_calls_skip_redis():
    breaker = Breaker(cooldown=60)
    client = make_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, breaker=breaker)  # nobody listens
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert breaker.open
    with pytest.raises(RedisSkipped):
        client.get("k")


def test_a_hung_redis_trips_every_client_of_the_process_at_once(redis_server):
    """The rate limiter's storage has a client of its own; its timeout spares the app's client the next one."""
    breaker = Breaker(cooldown=60)
    limiter_side = redis.Redis(connection_pool=guarded_pool(redis_server.url, timeout=0.2, breaker=breaker))
    app_side = make_redis(redis_server.url, timeout=0.2, breaker=breaker)
    app_side.ping()
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            limiter_side.get("k")
        with pytest.raises(RedisSkipped):
            app_side.get("k")
        assert time.monotonic() - started < 0.5  # one timeout, no retries
    finally:
        redis_server.resume()


@pytest.mark.parametrize(("limit", "processes", "share"), [
    ("600/minute", 6, "100 per 1 minute"),
    ("600/minute", 1, "600/minute"),
    ("5/minute", 6, "1 per 1 minute"),  # never zero: a client is throttled, not locked out
    ("3000/minute;100 per 2 seconds", 4, "750 per 1 minute;25 per 2 second"),
    ("30/minute", 4, "8 per 1 minute"),  # rounded up: the pool allows at least the budget
])
def test_each_process_counts_its_share_of_a_limit(limit, processes, share):
    assert share_of_limit(limit, processes) == share


def test_without_redis_each_process_counts_its_share_of_the_budget(backend, redis_server, accounts_, one_rate_window):
    """Three processes in the pool, a budget of 6 a minute: while Redis is gone this process allows 2."""
    settings = backend.settings(redis_url=redis_server.url, pool_processes=3, redis_timeout=0.2,
                                rate_limits={"standard": "6/minute"})
    app = create_app(settings)
    client = app.test_client()
    partner = accounts_.partner()
    redis_server.stop()
    try:
        codes = [client.get("/api/v1/orders", headers=auth(partner)) for _ in range(4)]
    finally:
        redis_server.start()
        app.extensions["mes_engine"].dispose()
        time.sleep(settings.redis_cooldown)
    assert [r.status_code for r in codes] == [200, 200, 429, 429]
    assert codes[0].headers["RateLimit-Limit"] == "2"
