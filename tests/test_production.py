"""Production records, work actions, rates and the ledger through mes.services.production, on both
backends: what the shop floor records is what pay is computed from."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from conftest import create_order

from mes.domain.errors import Conflict, Forbidden, ValidationFailed
from mes.domain.lifecycle import Status
from mes.domain.pay import PeriodKind, PeriodRule
from mes.domain.production import WorkState
from mes.models import ProductionRecord, utcnow
from mes.services import orders as svc
from mes.services import production
from mes.services.accounts import client_actor, operator_actor


@pytest.fixture
def floor(accounts_):
    """Two operators and their supervisor."""
    return (operator_actor(accounts_.operator("olga")), operator_actor(accounts_.operator("ivan")),
            operator_actor(accounts_.operator("chief", role="supervisor")))


def in_production(client, db, accounts_, holder, quantity: int = 500, product: str = "BRKT-200") -> int:
    order_id = create_order(client, accounts_.partner(), quantity=quantity, product=product).get_json()["id"]
    svc.claim(db, holder, order_id)
    svc.change_status(db, holder, order_id, Status.QUEUED)
    svc.change_status(db, holder, order_id, Status.IN_PRODUCTION)
    return order_id


def test_two_operators_make_one_order_in_several_records(client, db, accounts_, floor):
    olga, ivan, _ = floor
    order_id = in_production(client, db, accounts_, olga)
    first = production.record_output(db, olga, order_id, 200)
    second = production.record_output(db, ivan, order_id, "150", "5", "burr", "die worn")
    assert (first.quantities.produced, second.quantities.produced, second.quantities.scrapped) == (200, 350, 5)
    assert second.quantities.remaining == 150
    assert second.record.defect_code.code == "burr" and second.record.note == "die worn"
    with pytest.raises(ValidationFailed) as refused:
        production.record_output(db, olga, order_id, 151)
    assert refused.value.extensions["errors"][0]["message"] == "only 150 more good pieces are needed"
    with pytest.raises(ValidationFailed):
        production.record_output(db, olga, order_id, 0, 3)  # scrap without a defect code
    assert len(production.records_of(db, order_id)) == 2  # the refused ones left nothing


def test_quality_check_sends_pieces_back_and_they_are_made_again(client, db, accounts_, floor):
    olga, ivan, _ = floor
    order_id = in_production(client, db, accounts_, olga, quantity=100)
    made = production.record_output(db, olga, order_id, 100).record
    svc.change_status(db, olga, order_id, Status.QUALITY_CHECK)
    sent_back = production.record_rework(db, ivan, order_id, made.id, 12, "dimension")
    assert sent_back.record.reworks_id == made.id and sent_back.quantities.remaining == 12
    with pytest.raises(ValidationFailed):
        production.record_rework(db, ivan, order_id, made.id, 5, None)
    svc.change_status(db, olga, order_id, Status.IN_PRODUCTION, reason="12 out of tolerance")  # rework
    assert production.record_output(db, olga, order_id, 12).quantities.complete


def test_time_worked_is_counted_once_into_the_operators_next_record(client, db, accounts_, floor):
    olga, ivan, _ = floor
    order_id = in_production(client, db, accounts_, olga)
    assert production.act(db, olga, order_id, "start").state is WorkState.RUNNING
    with pytest.raises(Conflict):
        production.act(db, olga, order_id, "resume")
    assert production.act(db, olga, order_id, "pause").state is WorkState.PAUSED
    production.act(db, ivan, order_id, "start")  # Ivan's work is his own
    # Move the actions back in time: 40 minutes worked, then a pause.
    from mes.models import FloorEvent
    rows = (db.query(FloorEvent).filter_by(order_id=order_id, operator_id=olga.id)
            .filter(FloorEvent.action.in_(["start", "pause"])).order_by(FloorEvent.id).all())
    rows[0].created_at, rows[1].created_at = utcnow() - timedelta(minutes=70), utcnow() - timedelta(minutes=30)
    db.commit()
    first = production.record_output(db, olga, order_id, 10).record
    assert 40 * 60 - 5 <= first.worked_seconds <= 40 * 60 + 5
    assert production.record_output(db, olga, order_id, 10).record.worked_seconds == 0  # paused: nothing new
    with pytest.raises(Forbidden):
        production.act(db, client_actor_of(db, accounts_), order_id, "start")


def client_actor_of(db, accounts_):
    from mes.models import ApiClient
    headers = accounts_.partner("another")
    return client_actor(db.get(ApiClient, headers["_client_id"]))


def test_the_ledger_pays_each_piece_at_the_rate_valid_when_it_was_made(client, db, accounts_, floor):
    olga, ivan, chief = floor
    with pytest.raises(Forbidden):
        production.set_rate(db, olga, "BRKT", "in_production", "9.99")
    now = utcnow()
    production.set_rate(db, chief, "brkt", "in_production", "0.40", valid_from=now - timedelta(days=1))
    order_id = in_production(client, db, accounts_, olga)
    production.record_output(db, olga, order_id, 100)
    production.set_rate(db, chief, "BRKT", "in_production", "0.50", valid_from=utcnow())
    production.record_output(db, olga, order_id, 50)
    production.record_output(db, ivan, order_id, 20, 2, "crack")
    today, tomorrow = now.date(), now.date() + timedelta(days=1)
    mine = production.ledger(db, olga, today, tomorrow, operator_id=olga.id)
    assert list(mine) == [(olga.id, today)]
    line = mine[(olga.id, today)]
    assert (line.steps, line.good, line.pay) == (2, 150, Decimal("0.40") * 100 + Decimal("0.50") * 50)
    with pytest.raises(Forbidden):
        production.ledger(db, olga, today, tomorrow, operator_id=ivan.id)
    everyone = production.ledger(db, chief, today, tomorrow, period=PeriodRule(PeriodKind.MONTHLY))
    assert {op for op, _ in everyone} == {olga.id, ivan.id}
    assert everyone[(ivan.id, (today.replace(day=1), PeriodRule(PeriodKind.MONTHLY).period(today)[1]))].pay == 10
    with pytest.raises(ValidationFailed):
        production.set_rate(db, chief, "BRKT", "in_production", "-1")


def test_the_pages_sums_from_the_database_match_the_rules_record_by_record(client, db, accounts_, floor):
    """The ledger, "My work" and the period ledger add records up in SQL (services.production.batches); the
    rules (mes.domain.pay.ledger) price each record on its own. Same figures on a mixed year: rates changed
    in the middle of a day and of a period, a record at the very moment of a change, a family with no rate,
    two operators on one order, paused work, a quality check, a rework and its remake."""
    from mes.domain import pay
    from mes.models import ProductionRecord

    olga, ivan, chief = floor
    petr = operator_actor(accounts_.operator("petr"))
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    today = midnight.date()
    changed = midnight - timedelta(days=10) + timedelta(hours=13, minutes=30)
    production.set_rate(db, chief, "BRKT", "in_production", "0.40", valid_from=midnight - timedelta(days=60))
    production.set_rate(db, chief, "BRKT", "in_production", "0.4525", valid_from=changed)
    production.set_rate(db, chief, "SHAFT", "in_production", "1.20", valid_from=midnight - timedelta(days=60))
    production.set_rate(db, chief, "SHAFT", "quality_check", "0.05", valid_from=midnight - timedelta(days=60))
    production.set_rate(db, chief, "SHAFT", "in_production", "1.35", valid_from=midnight - timedelta(days=3, hours=2))

    partner = accounts_.partner()

    def making(holder, quantity, product):
        order_id = create_order(client, partner, quantity=quantity, product=product,
                                reference=f"PO-{product}").get_json()["id"]
        svc.claim(db, holder, order_id)
        svc.change_status(db, holder, order_id, Status.QUEUED)
        svc.change_status(db, holder, order_id, Status.IN_PRODUCTION)
        return order_id

    brackets = making(olga, 500, "BRKT-200")
    gears = making(ivan, 300, "GEAR-Z32")  # no rate: unpriced
    shafts = making(petr, 100, "SHAFT-12")
    production.act(db, olga, brackets, "start")
    production.act(db, olga, brackets, "pause")
    production.act(db, olga, brackets, "resume")
    production.act(db, ivan, brackets, "start")
    at = [midnight - timedelta(days=70)]  # before any rate: unpriced as well
    production.record_output(db, olga, brackets, 40)
    for when, (who, order_id, good, scrap) in [
            (midnight - timedelta(days=31, hours=-9), (olga, brackets, 60, 2)),
            (changed - timedelta(minutes=1), (olga, brackets, 25, 0)),
            (changed, (ivan, brackets, 30, 1)),  # at the very moment of the change: the new rate
            (changed + timedelta(hours=2), (olga, brackets, 35, 0)),
            (midnight - timedelta(days=9, hours=-8), (ivan, gears, 70, 3)),
            (midnight - timedelta(days=4), (petr, shafts, 100, 0)),
            (midnight - timedelta(days=2, hours=-10), (ivan, brackets, 50, 0)),
            (midnight + timedelta(minutes=5), (olga, gears, 20, 0))]:
        production.record_output(db, who, order_id, good, scrap, "burr" if scrap else None)
        at.append(when)
    svc.change_status(db, petr, shafts, Status.QUALITY_CHECK)
    checked = production.record_output(db, ivan, shafts, 90, 10, "crack").record
    made = [r for r in production.records_of(db, shafts) if r.stage == "in_production"][0]
    production.record_rework(db, ivan, shafts, made.id, 15, "dimension")
    svc.change_status(db, petr, shafts, Status.IN_PRODUCTION, reason="15 out of tolerance")
    production.record_output(db, petr, shafts, 15)
    at += [midnight - timedelta(days=3, hours=1), midnight - timedelta(days=3), midnight - timedelta(days=1)]
    rows = db.query(ProductionRecord).order_by(ProductionRecord.id).all()
    assert len(rows) == len(at) and checked.id == rows[-3].id
    for row, when in zip(rows, at):
        row.created_at = when
    db.commit()

    start, end = today - timedelta(days=90), today + timedelta(days=1)
    rates = production.rate_table(db)
    each = production.works(db, start, end)
    monthly = PeriodRule(PeriodKind.MONTHLY)
    by_day = production.ledger(db, chief, start, end)
    assert by_day == pay.ledger(each, rates)
    assert production.ledger(db, chief, start, end, period=monthly) == \
        pay.ledger(each, rates, key=lambda w: monthly.period(w.day))
    assert production.ledger(db, olga, start, end, operator_id=olga.id) == \
        pay.ledger(production.works(db, start, end, olga.id), rates)
    # The figures are not trivially equal: every kind of line is there.
    total = pay.totals(list(by_day.values()))
    assert (total.steps, total.good, total.unpriced_pieces) == (11, 535, 130)
    assert total.pay == (Decimal("0.40") * 85 + Decimal("0.4525") * 115 + Decimal("1.20") * 100
                         + Decimal("1.35") * 15)  # quality checks are not paid by the piece
    assert by_day[(olga.id, today - timedelta(days=10))].orders == {brackets}
    assert by_day[(ivan.id, today - timedelta(days=4))].orders == {shafts}  # the check, 3 days 1 hour ago

    for day in (today, today - timedelta(days=10), today - timedelta(days=31)):
        span, lines, sum_ = production.period_ledger(db, chief, day, PeriodRule(PeriodKind.WEEKLY))
        expected = pay.ledger(production.works(db, *span), rates, key=lambda w: None)
        assert {op.id: line for op, line in lines} == {op: line for (op, _), line in expected.items()}
        assert sum_ == pay.totals(list(expected.values()))

    for who in (olga, ivan, petr):
        for summary in production.summaries(db, who, today, monthly):
            expected = pay.ledger(production.works(db, summary.start, summary.end, who.id), rates,
                                  key=lambda w: None)
            assert summary.line == expected.get((who.id, None), pay.Line())
