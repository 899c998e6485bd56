"""The promise as partners, the CRM and the floor see it: the order's estimate and promise status, promise
changes in the feed (from a change to the order, and from the scheduled recomputation), the queue's
at-risk filter and the order page's time in stage (both databases)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import auth, create_order
from test_operator_ui import Browserless
from sqlalchemy import delete, select, update

from mes.demo import load_orders
from mes.domain.errors import ValidationFailed
from mes.domain import forecast as rules
from mes.domain.lifecycle import Status
from mes.models import Order, OrderEvent, ReasonCode, StageFlow, StageNorm, StatusCount, utcnow
from mes.services import backtest as backtest_svc
from mes.services import forecast, holds
from mes.services import orders as svc
from mes.services.accounts import operator_actor

DAY = 86400


@pytest.fixture
def floor(accounts_):
    return operator_actor(accounts_.operator("olga"))


def set_norm(db, stage: Status, days: float, family: str = "") -> None:
    """A learned norm, as `mes recompute-norms` would write it from history."""
    db.execute(delete(StageNorm).where(StageNorm.family == family, StageNorm.stage == stage.value))
    db.add(StageNorm(family=family, stage=stage.value, p50_seconds=int(days * DAY), p85_seconds=int(days * DAY * 1.5),
                     samples=100, computed_at=utcnow()))
    db.commit()


def feed(client, who) -> list[dict]:
    return client.get("/api/v1/status-changes", headers=auth(who)).get_json()["items"]


def test_a_new_order_carries_its_estimate_and_promise(client, accounts_):
    partner = accounts_.partner()
    body = create_order(client, partner).get_json()
    # Default norms: 0.5 + 3 + 8 + 1.5 + 1.5 = 14.5 days, well before the 21-day promise.
    assert body["promise_status"] == "on_track"
    created = client.get(f"/api/v1/orders/{body['id']}", headers=auth(partner)).get_json()
    assert created["estimated_completion"] == body["estimated_completion"] is not None
    [item] = feed(client, partner)
    assert (item["previous_promise_status"], item["promise_status"]) == (None, "on_track")
    assert item["estimated_completion"] == body["estimated_completion"]


def test_the_recomputation_flags_an_order_at_risk_once_and_tells_the_partner(client, accounts_, db):
    partner, crm = accounts_.partner(), accounts_.crm()
    oid = create_order(client, partner).get_json()["id"]
    set_norm(db, Status.IN_PRODUCTION, 25)  # history says production takes 25 days now
    first = forecast.recompute_promises(db)
    assert (first.open_orders, first.promises_changed) == (1, 1)
    assert forecast.recompute_promises(db).promises_changed == 0  # nothing new: no second event
    order = client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()
    assert order["promise_status"] == "at_risk"
    for who in (partner, crm):
        promise = [i for i in feed(client, who) if i["type"] == "promise"]
        assert len(promise) == 1
        assert (promise[0]["previous_promise_status"], promise[0]["promise_status"]) == ("on_track", "at_risk")
        assert promise[0]["estimated_completion"] == order["estimated_completion"]
        assert promise[0]["reason"].startswith("Taking longer than usual")
        assert promise[0]["status_version"] == order["status_version"] == 1  # a promise is not a status change
    set_norm(db, Status.IN_PRODUCTION, 8)
    assert forecast.recompute_promises(db).promises_changed == 1
    back = [i for i in feed(client, partner) if i["type"] == "promise"][-1]
    assert (back["promise_status"], back["reason"]) == ("on_track", "Back on schedule.")


def test_a_change_to_the_order_carries_the_promise_it_moved_without_the_internal_note(client, accounts_, db, floor):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    set_norm(db, Status.RECEIVED, 7)  # 7 + 3 + 8 + 1.5 + 1.5 = 21 days: inside the 1-day margin
    code = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "hold", ReasonCode.code == "machine_down"))
    holds.put_on_hold(db, floor, oid, code, "spindle bearing gone")
    item = feed(client, partner)[-1]
    assert (item["type"], item["previous_promise_status"], item["promise_status"]) == ("hold", "on_track", "at_risk")
    assert "spindle" not in str(item)


def test_a_bottleneck_queue_is_named_to_the_partner(client, accounts_, db):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    # 40 orders in production (the counter the model reads), leaving it 2 a day.
    db.execute(update(StatusCount).where(StatusCount.status == "in_production").values(count=40))
    db.add(StageFlow(stage="in_production", exits_per_day=2.0, computed_at=utcnow()))
    db.commit()
    forecast.recompute_promises(db)
    item = [i for i in feed(client, partner) if i["type"] == "promise"][-1]
    assert item["reason"] == "Waiting in the queue for production."
    order = db.get(Order, oid)
    db.refresh(order)
    assert order.projected_finish - utcnow() > timedelta(days=20)  # 40 orders at 2 a day


def test_shipping_settles_the_promise_as_met(client, accounts_, db):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    for target in (Status.QUEUED, Status.IN_PRODUCTION, Status.QUALITY_CHECK, Status.PACKED, Status.SHIPPED):
        svc.change_status(db, boss, oid, target)
    body = client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()
    assert (body["promise_status"], body["estimated_completion"]) == ("met", None)
    shipped = db.get(Order, oid)
    assert shipped.shipped_at is not None


def test_norms_are_learned_from_shipped_orders(app, db):
    load_orders(app.extensions["mes_engine"], 400, partners=3, seed=7)
    learned = forecast.recompute_norms(db)
    assert learned.orders > 50 and learned.norms >= 5
    overall = {r.stage: r for r in db.scalars(select(StageNorm).where(StageNorm.family == ""))}
    assert set(overall) == {s.value for s in rules.STAGES}
    # The demo's orders spend 0.4 to 2.2 times 8 days in production.
    assert 3.2 * DAY <= overall["in_production"].p50_seconds <= overall["in_production"].p85_seconds <= 17.6 * DAY
    assert {r.stage for r in db.scalars(select(StageFlow))} == {s.value for s in rules.STAGES}
    done = forecast.recompute_promises(db)
    open_orders = db.scalars(select(Order).where(Order.status.in_([s.value for s in rules.STAGES]))).all()
    assert done.open_orders == len(open_orders) > 0
    assert all(o.promise_status in ("on_track", "at_risk", "late") and o.projected_finish for o in open_orders)
    check = backtest_svc.backtest(db, days=60)
    assert check.orders > 20 and check.projections > check.orders
    assert 0 < check.mean_abs_error_days < 15 and check.missed <= check.orders
    assert backtest_svc.latest_check(db).id == check.id


def test_the_queue_filters_at_risk_orders_and_the_order_page_shows_time_in_stage(client, accounts_, db):
    partner = accounts_.partner()
    ok = create_order(client, partner, reference="PO-OK").get_json()["id"]
    risky = create_order(client, partner, reference="PO-RISK").get_json()["id"]
    db.execute(update(Order).where(Order.id == risky).values(promise_status="at_risk"))
    db.commit()
    accounts_.operator("olga", "secret-pass")
    assert Browserless(client).login("olga", "secret-pass").status_code == 302
    page = client.get("/operator/?promise=at_risk").get_data(as_text=True)
    assert f'data-order-id="{risky}"' in page and f'data-order-id="{ok}"' not in page
    assert 'id="at-risk-count">1<' in page
    bad = client.get("/operator/?promise=soon")
    assert bad.status_code == 400 and "promise" in bad.get_data(as_text=True)
    order_page = client.get(f"/operator/orders/{ok}").get_data(as_text=True)
    assert 'id="stages"' in order_page and 'data-stage="in_production"' in order_page
    assert "8.0 d" in order_page  # the default production norm


def late_code(db, code: str) -> int:
    return db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "late", ReasonCode.code == code))


def at_risk_order(client, accounts_, db, reference="PO-LATE") -> int:
    oid = create_order(client, accounts_.partner(name=f"erp-{reference}"), reference=reference).get_json()["id"]
    db.execute(update(Order).where(Order.id == oid).values(promise_status="at_risk"))
    db.commit()
    return oid


def test_moving_an_order_at_risk_asks_why_once_per_spell(client, accounts_, db, floor):
    oid = at_risk_order(client, accounts_, db)
    set_norm(db, Status.IN_PRODUCTION, 30)  # and it stays at risk after each move
    with pytest.raises(ValidationFailed) as refused:
        svc.change_status(db, floor, oid, Status.QUEUED)
    assert refused.value.extensions["errors"][0]["field"] == "late_reason"
    assert db.get(Order, oid).status == "received"  # nothing changed
    with pytest.raises(ValidationFailed):
        svc.change_status(db, floor, oid, Status.QUEUED, late_reason_id=1)  # a hold code, not a late one
    svc.change_status(db, floor, oid, Status.QUEUED, late_reason_id=late_code(db, "late_upstream"))
    event = db.scalars(select(OrderEvent).where(OrderEvent.order_id == oid).order_by(OrderEvent.id.desc())).first()
    assert event.reason_code.code == "late_upstream"
    svc.claim(db, floor, oid)
    svc.change_status(db, floor, oid, Status.IN_PRODUCTION)  # recorded already in this spell: not asked again
    assert db.get(Order, oid).late_reason.code == "late_upstream"


def test_back_on_track_ends_the_spell(client, accounts_, db, floor):
    oid = at_risk_order(client, accounts_, db)
    svc.change_status(db, floor, oid, Status.QUEUED, late_reason_id=late_code(db, "capacity"))
    order = db.get(Order, oid)
    db.refresh(order)
    assert order.promise_status == "on_track" and order.late_reason_id is None  # default norms: on track


def test_cancelling_and_partners_are_never_asked(client, accounts_, db):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    db.execute(update(Order).where(Order.id == oid).values(promise_status="late"))
    db.commit()
    assert client.post(f"/api/v1/orders/{oid}/cancel", json={}, headers=auth(partner)).status_code == 200


def test_a_hold_on_an_order_at_risk_records_its_cause(client, accounts_, db, floor):
    oid = at_risk_order(client, accounts_, db)
    set_norm(db, Status.IN_PRODUCTION, 30)  # stays at risk after the hold's refresh
    code = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "hold", ReasonCode.code == "machine_down"))
    holds.put_on_hold(db, floor, oid, code)
    assert db.get(Order, oid).late_reason.code == "machine_down"
    assert db.get(Order, oid).late_reason.kind == "late"


def test_the_order_page_asks_for_the_late_reason_and_keeps_the_order_on_refusal(client, accounts_, db):
    oid = at_risk_order(client, accounts_, db)
    accounts_.operator("olga", "secret-pass")
    b = Browserless(client)
    assert b.login("olga", "secret-pass").status_code == 302
    page = client.get(f"/operator/orders/{oid}").get_data(as_text=True)
    assert 'name="late_reason"' in page and "Why is this order at risk?" in page
    refused = b.post(f"/operator/orders/{oid}/status", f"/operator/orders/{oid}", target="queued", version="1")
    assert "choose why" in refused.get_data(as_text=True)
    assert db.get(Order, oid).status == "received"
    moved = b.post(f"/operator/orders/{oid}/status", f"/operator/orders/{oid}", target="queued", version="1",
                   late_reason=str(late_code(db, "tooling")))
    assert "is now queued" in moved.get_data(as_text=True)
    history = client.get(f"/operator/orders/{oid}").get_data(as_text=True)
    assert "late: Tooling" in history


def test_the_queue_sorts_by_projected_finish_latest_first_in_keyset_pages(client, accounts_, db):
    partner = accounts_.partner()
    ids = [create_order(client, partner, reference=f"PO-S{i}").get_json()["id"] for i in range(5)]
    base = utcnow()
    for i, oid in enumerate(ids):  # projected 0, 3, 6, 9, 12 days out
        db.execute(update(Order).where(Order.id == oid).values(projected_finish=base + timedelta(days=3 * i)))
    db.commit()
    first = svc.operator_queue(db, svc.QueueQuery(sort=svc.SORT_PROJECTED, limit=2), base.date())
    second = svc.operator_queue(db, svc.QueueQuery(sort=svc.SORT_PROJECTED, limit=2, after=first.next_cursor),
                                base.date())
    third = svc.operator_queue(db, svc.QueueQuery(sort=svc.SORT_PROJECTED, limit=2, after=second.next_cursor),
                               base.date())
    assert [o.id for o in first.items + second.items + third.items] == ids[::-1]
    assert third.next_cursor is None
    accounts_.operator("olga", "secret-pass")
    Browserless(client).login("olga", "secret-pass")
    page = client.get("/operator/?sort=projected").get_data(as_text=True)
    assert page.index(f'data-order-id="{ids[4]}"') < page.index(f'data-order-id="{ids[0]}"')
    assert client.get("/operator/?sort=random").status_code == 400
