"""The write-through status cache against a real Redis: versions, fills, Redis down and back."""
from __future__ import annotations

import time

import pytest
from conftest import auth, create_order
from sqlalchemy import func, select, update

from mes import create_app
from mes.models import Order, StaleStatus
from mes.redis_client import make_redis
from mes.status_cache import StatusCache, StatusEntry
from mes.testing.redis import temporary_redis


@pytest.fixture(scope="module")
def redis_server():
    with temporary_redis() as server:
        yield server


@pytest.fixture
def cached_app(backend, redis_server):
    make_redis(redis_server.url).flushdb()
    app = create_app(backend.settings(redis_url=redis_server.url))
    yield app
    app.extensions["mes_engine"].dispose()
    if redis_server.process is None:
        redis_server.start()


def entry(version: int, status: str = "queued") -> StatusEntry:
    return StatusEntry(id=7, partner_id=1, status=status, status_version=version, updated_at="2026-01-01T00:00:00Z")


def test_a_put_never_overwrites_a_newer_version(redis_server):
    cache = StatusCache(make_redis(redis_server.url), ttl=60)
    cache.client.delete(cache.key(7))
    assert cache.get(7) is None
    cache.put(entry(3, "in_production"))
    cache.put(entry(2, "queued"))  # a slow writer or a late fill
    assert cache.get(7) == entry(3, "in_production")
    cache.put(entry(4, "quality_check"))
    assert cache.get(7).status == "quality_check"
    assert 0 < cache.client.ttl(cache.key(7)) <= 60  # expiry is only a safety net


def test_without_redis_the_cache_is_off(backend):
    cache = StatusCache(None, ttl=60)
    cache.put(entry(1))
    assert not cache.enabled and cache.get(7) is None


def test_status_reads_come_from_the_cache_and_writes_go_through(cached_app, accounts_, db):
    client = cached_app.test_client()
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    cache = cached_app.extensions["mes_status_cache"]
    assert cache.get(oid).status == "received"  # written through on create
    # Change the row behind the app's back: the status read still answers from the cache...
    db.execute(update(Order).where(Order.id == oid).values(notes="touched"))
    db.commit()
    marked = cache.client.hget(cache.key(oid), "d").replace("2026", "1999")  # only the cache says 1999
    cache.client.hset(cache.key(oid), "d", marked)
    assert client.get(f"/api/v1/orders/{oid}/status", headers=auth(partner)).get_json()["updated_at"].startswith("1999")
    # ...and a real change through the app replaces the entry before it is acknowledged.
    client.post(f"/api/v1/orders/{oid}/cancel", headers=auth(partner))
    assert cache.get(oid).status == "cancelled" and cache.get(oid).status_version == 2
    assert client.get(f"/api/v1/orders/{oid}/status", headers=auth(partner)).get_json()["status"] == "cancelled"


def test_a_miss_fills_the_cache_and_other_partners_still_get_404(cached_app, accounts_):
    client = cached_app.test_client()
    a, b = accounts_.partner("a", "A"), accounts_.partner("b", "B")
    oid = create_order(client, a).get_json()["id"]
    cache = cached_app.extensions["mes_status_cache"]
    cache.client.delete(cache.key(oid))
    assert client.get(f"/api/v1/orders/{oid}/status", headers=auth(a)).status_code == 200
    assert cache.get(oid).status == "received"
    assert client.get(f"/api/v1/orders/{oid}/status", headers=auth(b)).status_code == 404


def test_redis_down_reads_fall_back_writes_succeed_and_no_stale_entry_survives(cached_app, accounts_,
                                                                                redis_server):
    client = cached_app.test_client()
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    cache = cached_app.extensions["mes_status_cache"]
    assert cache.get(oid).status == "received"

    redis_server.pause()  # hung, not dead: its old entry is still inside when it comes back
    try:
        started = time.monotonic()
        r = client.post(f"/api/v1/orders/{oid}/cancel", headers=auth(partner))
        assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
        r = client.get(f"/api/v1/orders/{oid}/status", headers=auth(partner))
        assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
        r = client.get("/api/v1/orders", headers=auth(partner))  # rate limiting falls back to memory
        assert r.status_code == 200
        assert time.monotonic() - started < 5
    finally:
        redis_server.resume()
    time.sleep(cached_app.extensions["mes_settings"].redis_cooldown)
    assert client.get(f"/api/v1/orders/{oid}/status", headers=auth(partner)).get_json()["status"] == "cancelled"
    # The entry written before the outage was rewritten from the primary before the cache was read.
    assert cache.get(oid).status == "cancelled"


def test_redis_restarted_comes_back_empty(cached_app, accounts_, redis_server):
    client = cached_app.test_client()
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    redis_server.stop()
    assert client.post(f"/api/v1/orders/{oid}/cancel", headers=auth(partner)).status_code == 200
    assert client.get(f"/api/v1/orders/{oid}/status", headers=auth(partner)).get_json()["status"] == "cancelled"
    redis_server.start()
    time.sleep(cached_app.extensions["mes_settings"].redis_cooldown + 0.1)
    assert client.get(f"/api/v1/orders/{oid}/status", headers=auth(partner)).get_json()["status"] == "cancelled"


def test_rate_limits_are_shared_by_every_instance_through_redis(backend, redis_server, accounts_, one_rate_window):
    make_redis(redis_server.url).flushdb()
    apps = [create_app(backend.settings(redis_url=redis_server.url)) for _ in range(2)]
    slow = accounts_.partner("slow", "S", tier="tiny")
    codes = [apps[i % 2].test_client().get("/api/v1/orders", headers=auth(slow)).status_code for i in range(4)]
    assert codes == [200, 200, 200, 429]
    for app in apps:
        app.extensions["mes_engine"].dispose()


# Read-your-writes routes between PostgreSQL servers: PostgreSQL only (SQLite has no replica to avoid).
@pytest.mark.postgresql_only
def test_read_your_writes_looks_up_markers_only_where_a_replica_could_be_read(backend, redis_server, accounts_):
    """The marker lookup is a Redis GET per request: status reads (cache or primary) and read-only
    CRM clients skip it, a writer's next replica read still makes it."""
    raw = make_redis(redis_server.url)
    raw.flushdb()
    app = create_app(backend.settings(redis_url=redis_server.url, read_your_writes=True))
    client = app.test_client()
    partner, crm = accounts_.partner(), accounts_.crm()
    oid = create_order(client, partner).get_json()["id"]  # leaves the partner's write marker

    raw.config_set("slowlog-log-slower-than", 0)  # Redis's own log of every command, with its arguments
    raw.config_set("slowlog-max-len", 1000)

    def marker_lookups(path: str, headers: dict) -> int:
        raw.slowlog_reset()
        assert client.get(path, headers=auth(headers)).status_code == 200
        return sum(1 for e in raw.slowlog_get(1000) if e["command"].startswith(b"GET mes:rw:"))

    assert marker_lookups(f"/api/v1/orders/{oid}/status", partner) == 0
    assert marker_lookups(f"/api/v1/orders/{oid}/status", crm) == 0
    assert marker_lookups(f"/api/v1/orders/{oid}", crm) == 0
    assert marker_lookups(f"/api/v1/orders/{oid}", partner) == 1
    raw.config_set("slowlog-log-slower-than", 10000)
    app.extensions["mes_engine"].dispose()


def test_a_write_missed_by_a_hung_redis_is_settled_by_another_process(backend, accounts_, redis_server, db):
    """The writing process goes away (a reload, a recycled worker) while Redis hangs with the old entry
    inside: the trace in the database, not that process's memory, brings the cache up to date."""
    make_redis(redis_server.url).flushdb()
    writer = create_app(backend.settings(redis_url=redis_server.url, redis_timeout=0.2))
    partner = accounts_.partner()
    oid = create_order(writer.test_client(), partner).get_json()["id"]
    raw = make_redis(redis_server.url)
    assert raw.hget(f"mes:status:{oid}", "d") is not None
    assert db.scalar(select(func.count()).select_from(StaleStatus)) == 0  # Redis has it: no trace left
    redis_server.pause()
    try:
        r = writer.test_client().post(f"/api/v1/orders/{oid}/cancel", headers=auth(partner))
        assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    finally:
        writer.extensions["mes_engine"].dispose()  # the writing process is gone, with its memory
        redis_server.resume()
    db.rollback()  # a new snapshot
    assert db.execute(select(StaleStatus.order_id, StaleStatus.status_version)).all() == [(oid, 2)]
    assert '"received"' in raw.hget(f"mes:status:{oid}", "d")  # Redis came back with the old entry
    reader = create_app(backend.settings(redis_url=redis_server.url, redis_timeout=0.2))
    r = reader.test_client().get(f"/api/v1/orders/{oid}/status", headers=auth(partner))
    assert r.get_json()["status"] == "cancelled"
    assert '"cancelled"' in raw.hget(f"mes:status:{oid}", "d")  # rewritten, not only bypassed
    db.rollback()
    assert db.scalar(select(func.count()).select_from(StaleStatus)) == 0
    reader.extensions["mes_engine"].dispose()
