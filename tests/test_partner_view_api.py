"""The partner's view of an order, as an integrator meets it: lookup by its own reference, a cancel
that is safe to retry (with or without an Idempotency-Key), If-Match against a stale view, conflicts
that list only the caller's moves, and feed items that say whose order they are."""
from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from conftest import NEW_ORDER, auth, cancel_reason, create_order
from sqlalchemy import select, update
from test_api import assert_problem
from test_concurrency import race

from mes.domain.actors import Actor, OrderFacts, Role, Scope, check_move
from mes.domain.errors import InvalidTransition
from mes.domain.lifecycle import Status
from mes.models import IdempotencyRecord, Order, ReasonCode, utcnow
from mes.services import forecast, holds
from mes.services import orders as svc
from mes.services.accounts import operator_actor


def orders_at(client, headers, query: str) -> list[dict]:
    r = client.get(f"/api/v1/orders?{query}", headers=auth(headers))
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()["items"]


def cancel(client, headers, oid: int, *, key: str | None = None, if_match: str | None = None, **body):
    extra = {}
    if key is not None:
        extra["Idempotency-Key"] = key
    if if_match is not None:
        extra["If-Match"] = if_match
    return client.post(f"/api/v1/orders/{oid}/cancel", json=body or None, headers={**auth(headers), **extra})


# ------------------------------------------------------------------------------------ lookup by reference
def test_a_partner_finds_its_order_by_its_own_reference_exactly(client, accounts_):
    partner, other = accounts_.partner("a", "A"), accounts_.partner("b", "B")
    upper = create_order(client, partner, reference="PO-2024/0042").get_json()
    lower = create_order(client, partner, reference="po-2024/0042").get_json()  # another reference: case counts
    theirs = create_order(client, other, reference="PO-2024/0042").get_json()  # unique per partner only
    create_order(client, partner, reference="PO-2024/00421")
    assert [o["id"] for o in orders_at(client, partner, "reference=PO-2024/0042")] == [upper["id"]]
    assert [o["id"] for o in orders_at(client, partner, "reference=po-2024/0042")] == [lower["id"]]
    assert [o["id"] for o in orders_at(client, other, "reference=PO-2024/0042")] == [theirs["id"]]
    assert orders_at(client, partner, "reference=PO-2024") == []  # no prefix matching
    assert orders_at(client, partner, "reference=Po-2024/0042") == []
    # Filters combine with the reference.
    assert orders_at(client, partner, "reference=PO-2024/0042&status=cancelled") == []
    assert [o["id"] for o in orders_at(client, partner, "reference=PO-2024/0042&status=received")] == [upper["id"]]


def test_a_reference_that_cannot_be_one_is_a_400(client, accounts_):
    h = auth(accounts_.partner())
    for query in ("reference=", "reference=-PO", "reference=PO%201", "reference=" + "x" * 65, "reference=PO%00",
                  "partner_id=0", "partner_id=x", "partner_id=2147483648"):
        body = assert_problem(client.get(f"/api/v1/orders?{query}", headers=h), 400, "bad-query")
        assert body["errors"][0]["field"] == query.partition("=")[0], query


def test_the_crm_looks_up_by_partner_and_reference_a_partner_only_its_own(client, accounts_):
    a, b, crm = accounts_.partner("a", "A"), accounts_.partner("b", "B"), accounts_.crm()
    mine = create_order(client, a, reference="SO-7").get_json()
    theirs = create_order(client, b, reference="SO-7").get_json()
    create_order(client, b, reference="SO-8")
    assert {o["id"] for o in orders_at(client, crm, "reference=SO-7")} == {mine["id"], theirs["id"]}
    for partner, order in ((a, mine), (b, theirs)):
        found = orders_at(client, crm, f"partner_id={order['partner_id']}&reference=SO-7")
        assert [(o["id"], o["partner_id"], o["reference"]) for o in found] == [(order["id"], order["partner_id"], "SO-7")]
    assert len(orders_at(client, crm, f"partner_id={b['_partner_id']}")) == 2
    # A partner's own id narrows nothing; another partner's id finds nothing, as if no such order existed.
    assert [o["id"] for o in orders_at(client, a, f"partner_id={a['_partner_id']}&reference=SO-7")] == [mine["id"]]
    assert orders_at(client, a, f"partner_id={b['_partner_id']}&reference=SO-7") == []
    assert orders_at(client, a, f"partner_id={b['_partner_id']}") == []


def test_references_are_unique_per_partner_in_the_schema(backend):
    """The migrations' unique constraint (since 0001), not a check in the code, is what keeps a reference
    to one order per partner when creates race; lookups by partner and reference read it."""
    import warnings

    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import SAWarning
    engine = create_engine(backend.owner_url)
    try:
        with warnings.catch_warnings():  # an expression index (lower(reference)) cannot be reflected
            warnings.simplefilter("ignore", SAWarning)
            uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("orders")}
    finally:
        engine.dispose()
    assert ("partner_id", "reference") in uniques


# ------------------------------------------------------------------------------------ duplicate references
def test_a_second_order_with_a_reference_is_409_naming_the_first_and_a_replay_is_not(client, accounts_):
    partner = accounts_.partner()
    first = create_order(client, partner, key="k-1", reference="PO-9")
    # The same key and body is a retry of the first create: it replays the 201, no conflict.
    again = create_order(client, partner, key="k-1", reference="PO-9")
    assert again.status_code == 201 and again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["ETag"] == first.headers["ETag"]
    body = assert_problem(create_order(client, partner, key="k-2", reference="PO-9", quantity=5), 409,
                          "reference-conflict")
    assert body["existing_order_id"] == first.get_json()["id"] and str(first.get_json()["id"]) in body["detail"]
    # The refused create stored nothing under its key: fixed, it goes through with the same key.
    assert create_order(client, partner, key="k-2", reference="PO-10", quantity=5).status_code == 201


@pytest.mark.postgresql_only
def test_creates_of_one_reference_at_once_make_one_order(live_server, accounts_, db):
    """Different keys, one reference, at the same moment: the unique index lets one in, the others
    learn which order has it."""
    partner = accounts_.partner()

    def post(i):
        return requests.post(f"{live_server.url}/api/v1/orders", json={**NEW_ORDER, "reference": "RACE-1"},
                             headers={**auth(partner), "Idempotency-Key": f"race-{i}"}, timeout=30)

    answers = race(6, post)
    created = [r for r in answers if r.status_code == 201]
    assert len(created) == 1, [r.text for r in answers]
    for r in answers:
        if r.status_code != 201:
            assert r.status_code == 409 and r.json()["type"] == "/problems/reference-conflict", r.text
            assert r.json()["existing_order_id"] == created[0].json()["id"]
    assert svc.status_counts(db)["received"] == 1


# ------------------------------------------------------------------------------------ idempotent cancel
def test_a_cancel_replayed_with_its_key_returns_the_first_answer(client, accounts_, db):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    first = cancel(client, partner, oid, key="cancel-1", reason="customer withdrew")
    assert first.status_code == 200 and first.get_json()["status"] == "cancelled"
    assert "Idempotent-Replayed" not in first.headers
    again = cancel(client, partner, oid, key="cancel-1", reason="customer withdrew")
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["ETag"] == first.headers["ETag"]
    # The replay comes before the precondition: a retry keeps its first answer whatever it sends with it.
    stale = cancel(client, partner, oid, key="cancel-1", if_match='"1-1"', reason="customer withdrew")
    assert stale.status_code == 200 and stale.headers["Idempotent-Replayed"] == "true"
    assert [e.to_status for e in svc.history(db, oid)] == ["received", "cancelled"]
    assert db.get(IdempotencyRecord, (partner["_client_id"], "cancel-1")).order_id == oid


def test_a_cancel_key_reused_for_another_request_is_422(client, accounts_):
    partner = accounts_.partner()
    one, two = (create_order(client, partner, key=f"create-{i}", reference=f"R-{i}").get_json()["id"]
                for i in (1, 2))
    assert cancel(client, partner, one, key="c", reason="a").status_code == 200
    assert_problem(cancel(client, partner, one, key="c", reason="b"), 422, "idempotency-key-reused")
    assert_problem(cancel(client, partner, two, key="c", reason="a"), 422, "idempotency-key-reused")
    # A create's key is a key of the same client: sent with a cancel, it names another request.
    assert_problem(cancel(client, partner, two, key="create-2"), 422, "idempotency-key-reused")
    assert client.get(f"/api/v1/orders/{two}", headers=auth(partner)).get_json()["status"] == "received"
    for key, field in ((" ", "Idempotency-Key"), ("k" * 256, "Idempotency-Key"), ("ключ", "Idempotency-Key")):
        r = client.post(f"/api/v1/orders/{two}/cancel", headers={**auth(partner), "Idempotency-Key": key})
        assert r.status_code in (400, 422) and r.mimetype == "application/problem+json", key
        assert r.get_json()["errors"][0]["field"] == field


def test_a_refused_cancel_stores_nothing_under_its_key(client, accounts_, db):
    partner = accounts_.partner()
    order = create_order(client, partner)
    oid = order.get_json()["id"]
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    svc.change_status(db, boss, oid, Status.QUEUED)
    assert_problem(cancel(client, partner, oid, key="c-1", if_match=order.headers["ETag"]), 412,
                   "precondition-failed")
    assert db.get(IdempotencyRecord, (partner["_client_id"], "c-1")) is None
    fresh = client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).headers["ETag"]
    done = cancel(client, partner, oid, key="c-1", if_match=fresh)
    assert done.status_code == 200 and "Idempotent-Replayed" not in done.headers


def test_a_cancel_of_an_order_cancelled_by_the_factory_answers_the_order(client, accounts_, db):
    """Without a key, a cancel of a cancelled order is no conflict, whoever cancelled it and whatever
    If-Match says: the state asked for holds. The factory's reason stays, the feed gets nothing new."""
    partner = accounts_.partner()
    created = create_order(client, partner)
    oid = created.get_json()["id"]
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    svc.change_status(db, boss, oid, Status.CANCELLED, cancel_reason_id=cancel_reason(db, "duplicate_order"),
                      note="duplicate of 17 per phone call")
    for if_match in (None, created.headers["ETag"]):
        r = cancel(client, partner, oid, if_match=if_match, reason="never mind")
        assert r.status_code == 200 and r.get_json()["status"] == "cancelled" and r.get_json()["status_version"] == 2
    assert len(svc.history(db, oid)) == 2
    feed = client.get("/api/v1/status-changes", headers=auth(partner)).get_json()["items"]
    assert [e["to_status"] for e in feed] == ["received", "cancelled"]


@pytest.mark.postgresql_only
def test_cancels_at_once_cancel_once_and_all_answer_200(live_server, accounts_, db):
    """Retries that overlap: with one key, one answer is the first and the rest replay it; without a
    key, every one answers the cancelled order. One event either way."""
    partner = accounts_.partner()
    for round_, key in enumerate(("same-cancel", None)):
        oid = requests.post(f"{live_server.url}/api/v1/orders", json={**NEW_ORDER, "reference": f"CC-{round_}"},
                            headers={**auth(partner), "Idempotency-Key": f"cc-{round_}"}, timeout=30).json()["id"]

        def post(_i, oid=oid, key=key):
            headers = {**auth(partner), **({"Idempotency-Key": key} if key else {})}
            return requests.post(f"{live_server.url}/api/v1/orders/{oid}/cancel", json={"reason": "x"},
                                 headers=headers, timeout=30)

        answers = race(6, post)
        assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
        assert len({r.text for r in answers}) == 1
        if key:
            assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 5
        db.rollback()
        assert [e.to_status for e in svc.history(db, oid)] == ["received", "cancelled"]
    assert svc.status_counts(db)["cancelled"] == 2


# ------------------------------------------------------------------------------------ ETag and If-Match
def test_the_order_has_an_etag_and_if_match_guards_the_cancel(client, accounts_, db):
    partner = accounts_.partner()
    created = create_order(client, partner)
    oid = created.get_json()["id"]
    read = client.get(f"/api/v1/orders/{oid}", headers=auth(partner))
    assert read.headers["ETag"] == created.headers["ETag"]
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    svc.change_status(db, boss, oid, Status.QUEUED)  # the partner's view is now stale
    body = assert_problem(cancel(client, partner, oid, if_match=read.headers["ETag"]), 412, "precondition-failed")
    now = client.get(f"/api/v1/orders/{oid}", headers=auth(partner))
    assert (body["current_status"], body["status_version"]) == ("queued", 2)
    assert f'"{body["etag"]}"' == now.headers["ETag"] != read.headers["ETag"]
    assert client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()["status"] == "queued"
    done = cancel(client, partner, oid, if_match=now.headers["ETag"])
    assert done.status_code == 200 and done.get_json()["status"] == "cancelled"
    assert done.headers["ETag"] == client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).headers["ETag"]


def test_if_match_takes_the_status_tag_a_list_of_tags_and_star_but_no_weak_tag(client, accounts_):
    partner = accounts_.partner()
    ids = [create_order(client, partner, key=f"k{i}", reference=f"T-{i}").get_json()["id"] for i in range(4)]
    status_tag = client.get(f"/api/v1/orders/{ids[0]}/status", headers=auth(partner)).headers["ETag"]
    assert cancel(client, partner, ids[0], if_match=status_tag).status_code == 200
    assert cancel(client, partner, ids[1], if_match=f'"{ids[1]}-9", "{ids[1]}-1"').status_code == 200
    assert cancel(client, partner, ids[2], if_match="*").status_code == 200
    assert_problem(cancel(client, partner, ids[3], if_match=f'W/"{ids[3]}-1"'), 412, "precondition-failed")
    assert_problem(cancel(client, partner, ids[3], if_match=f'"{ids[0]}-1"'), 412, "precondition-failed")  # another order
    for nonsense in ('"nonsense"', '"^,c", "", ""', '""', "", ","):
        assert_problem(cancel(client, partner, ids[3], if_match=nonsense), 412, "precondition-failed")


def test_a_hold_makes_the_view_stale_a_new_estimate_does_not(client, accounts_, db):
    partner = accounts_.partner()
    floor = operator_actor(accounts_.operator("olga"))
    held, moved = (create_order(client, partner, key=f"k{i}", reference=f"H-{i}") for i in range(2))
    code = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "hold", ReasonCode.code == "machine_down"))
    holds.put_on_hold(db, floor, held.get_json()["id"], code)
    assert_problem(cancel(client, partner, held.get_json()["id"], if_match=held.headers["ETag"]), 412,
                   "precondition-failed")
    # The scheduler's refresh, as if a month had passed: the promise changes (late), the order's tag with
    # it, and its status_version does not.
    forecast.recompute_promises(db, now=utcnow() + timedelta(days=30))
    now = client.get(f"/api/v1/orders/{moved.get_json()['id']}", headers=auth(partner))
    assert now.get_json()["promise_status"] == "late" and now.headers["ETag"] != moved.headers["ETag"]
    assert now.get_json()["status_version"] == moved.get_json()["status_version"]
    assert cancel(client, partner, moved.get_json()["id"], if_match=moved.headers["ETag"]).status_code == 200


def test_if_none_match_answers_304_until_the_order_changes_its_estimate_included(client, accounts_, db):
    partner = accounts_.partner()
    created = create_order(client, partner)
    oid, path = created.get_json()["id"], f"/api/v1/orders/{created.get_json()['id']}"
    tag = client.get(path, headers=auth(partner)).headers["ETag"]
    for sent in (tag, f"W/{tag}", f'"nothing", {tag}', "*"):
        same = client.get(path, headers={**auth(partner), "If-None-Match": sent})
        assert same.status_code == 304 and same.get_data() == b"" and same.headers["ETag"] == tag, sent
    assert client.get(path, headers={**auth(partner), "If-None-Match": '"nothing"'}).status_code == 200
    # The scheduler moves an estimate alone (no new updated_at): the tag moves with it, no stale 304.
    db.execute(update(Order).where(Order.id == oid).values(projected_finish=utcnow() + timedelta(days=40)))
    db.commit()
    moved = client.get(path, headers={**auth(partner), "If-None-Match": tag})
    assert moved.status_code == 200 and moved.headers["ETag"] != tag
    assert moved.get_json()["estimated_completion"]
    # The new tag still guards a cancel like any tag of the same status_version.
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    svc.change_status(db, boss, oid, Status.QUEUED)
    changed = client.get(path, headers={**auth(partner), "If-None-Match": moved.headers["ETag"]})
    assert changed.status_code == 200 and changed.get_json()["status"] == "queued"
    other = accounts_.partner("globex-erp", "Globex")
    assert client.get(path, headers={**auth(other), "If-None-Match": "*"}).status_code == 404


# ------------------------------------------------------------------------------------ conflicts and the feed
def test_a_conflict_lists_only_the_moves_the_caller_may_make():
    partner = Actor("client", 1, "acme", scope=Scope.PARTNER, partner_id=7)
    olga = Actor("operator", 2, "olga", role=Role.OPERATOR)
    chief = Actor("operator", 3, "chief", role=Role.SUPERVISOR)
    shipped = OrderFacts(Status.SHIPPED, partner_id=7, holder_id=None)
    in_production = OrderFacts(Status.IN_PRODUCTION, partner_id=7, holder_id=2)
    cases = [(partner, shipped, ["delivered"]), (olga, shipped, ["delivered"]), (partner, in_production, []),
             (olga, in_production, ["quality_check"]), (chief, in_production, ["quality_check"]),
             (Actor("operator", 4, "otto", role=Role.OPERATOR), in_production, [])]
    for actor, order, allowed in cases:
        with pytest.raises(InvalidTransition) as err:
            check_move(actor, order, Status.CANCELLED)
        assert err.value.extensions == {"current_status": order.status.value, "allowed_transitions": allowed}


def test_a_partner_cancelling_a_shipped_order_is_told_it_may_confirm_delivery(client, accounts_, db):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    for step in (Status.QUEUED, Status.IN_PRODUCTION, Status.QUALITY_CHECK, Status.PACKED, Status.SHIPPED):
        svc.change_status(db, boss, oid, step)
    body = assert_problem(cancel(client, partner, oid, key="late-cancel"), 409, "invalid-transition")
    assert body["current_status"] == "shipped" and body["allowed_transitions"] == ["delivered"]
    assert db.get(IdempotencyRecord, (partner["_client_id"], "late-cancel")) is None


def test_feed_items_say_whose_order_it_is(client, accounts_):
    a, b, crm = accounts_.partner("a", "A"), accounts_.partner("b", "B"), accounts_.crm()
    create_order(client, a, reference="FA-1")
    oid = create_order(client, b, reference="FB-1").get_json()["id"]
    cancel(client, b, oid, reason="dup")
    items = client.get("/api/v1/status-changes", headers=auth(crm)).get_json()["items"]
    assert [(e["partner_id"], e["reference"], e["to_status"]) for e in items] == [
        (a["_partner_id"], "FA-1", "received"), (b["_partner_id"], "FB-1", "received"),
        (b["_partner_id"], "FB-1", "cancelled")]
    own = client.get("/api/v1/status-changes", headers=auth(b)).get_json()["items"]
    assert {(e["partner_id"], e["reference"]) for e in own} == {(b["_partner_id"], "FB-1")}


def test_the_openapi_document_describes_the_partners_view(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    listing = {p["name"] for p in spec["paths"]["/orders"]["get"]["parameters"]}
    assert {"reference", "partner_id"} <= listing
    cancel_op = spec["paths"]["/orders/{order_id}/cancel"]["post"]
    headers = {p.get("name") or p["$ref"].rsplit("/", 1)[1] for p in cancel_op["parameters"]}
    assert headers == {"IdempotencyKeyOptional", "If-Match"}
    assert spec["components"]["parameters"]["IdempotencyKeyOptional"]["required"] is False
    assert {"200", "409", "412"} <= set(cancel_op["responses"])
    assert {"ETag", "Idempotent-Replayed"} <= set(cancel_op["responses"]["200"]["headers"])
    assert "ETag" in spec["paths"]["/orders/{order_id}"]["get"]["responses"]["200"]["headers"]
    feed_item = spec["components"]["schemas"]["StatusChange"]
    assert {"partner_id", "reference"} <= set(feed_item["required"])
    assert "case included" in spec["info"]["description"]
