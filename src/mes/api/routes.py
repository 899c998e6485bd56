"""Endpoints of API v1. Each one parses, calls a service, renders; errors go to mes.errors."""
from __future__ import annotations

import json
import re
from importlib.resources import files

import yaml
from flask import Response, g, jsonify, request, url_for

from ..domain import inputs
from ..domain.idempotency import check_key, fingerprint, optional_key
from ..domain.lifecycle import Status
from ..domain.preconditions import IfMatch
from ..db import use_primary
from ..domain.actors import OrderFacts, may_write, sees_order
from ..domain.errors import NotFound
from ..effects import cache_entry, cache_settler, order_created, route_reads, status_cache, status_changed
from ..status_cache import StatusEntry
from .. import query_params
from ..extensions import budget, limiter
from ..services import cancellation, feed, shipments
from ..services import orders as svc
from ..web import db_session, settings
from . import bp
from .render import etag, event_json, order_etag, order_json, shipment_json
from .schemas import CancelRequest, DeliverRequest, OrderCreate, json_body, validate

OPENAPI_TEXT = files("mes.api").joinpath("openapi.yaml").read_text()
OPENAPI = yaml.safe_load(OPENAPI_TEXT)
STATUS_VALUES = [s.value for s in Status]
MAX_PARTNER_ID = 2**31 - 1  # partners.id is an INTEGER


def _documented_query_params(spec: dict) -> dict[tuple[str, str], set[str]]:
    """(path template, method) -> the query parameters the OpenAPI document allows there."""
    allowed = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                params = op.get("parameters", []) + item.get("parameters", [])
                allowed[(path, method.upper())] = {p["name"] for p in params if p.get("in") == "query"}
    return allowed


QUERY_PARAMS = _documented_query_params(OPENAPI)
PATH_VARIABLE = re.compile(r"<(?:\w+:)?(\w+)>")  # werkzeug's <id:order_id> is OpenAPI's {order_id}


# Views that never read a replica: the status cache is never older than the last acknowledged
# write, and a miss reads the primary. Read-your-writes has nothing to route there.
NO_REPLICA_READS = {"api.get_status"}


@bp.before_request
def route_reads_of_recent_writers():
    """Only where it can matter: the marker lookup is a Redis round trip on every request."""
    actor = g.get("actor")
    if actor is not None and may_write(actor) and request.endpoint not in NO_REPLICA_READS:
        route_reads()


@bp.before_request
def reject_unknown_query_parameters():
    """A misspelt filter (`?stauts=queued`) must not silently return everything."""
    if request.url_rule is None:
        return
    template = PATH_VARIABLE.sub(r"{\1}", request.url_rule.rule.removeprefix(bp.url_prefix))
    method = "GET" if request.method == "HEAD" else request.method
    unknown = set(request.args) - QUERY_PARAMS.get((template, method), set())
    if unknown:
        raise query_params.bad_query(sorted(unknown)[0], "is not a parameter of this operation")


def tier_limit() -> str:
    """The rate limit of the calling client's tier (the key was checked before this runs)."""
    client = g.get("client")
    limits = settings().rate_limits
    return budget(limits.get(client.rate_tier, limits["standard"]) if client is not None else limits["standard"])


# One budget per client and tier across every endpoint (a shared scope; a plain limit on a blueprint
# counts each endpoint apart). An endpoint may add a tighter limit of its own with
# `@limiter.limit(..., override_defaults=False)`, which is counted besides this one.
limiter.shared_limit(tier_limit, scope="api")(bp)


@bp.post("/orders")
def create_order():
    key = check_key(request.headers.get("Idempotency-Key"))
    data = json_body()
    body = validate(OrderCreate, data)
    new = svc.NewOrder(reference=body.reference, product=body.product, material=body.material,
                       quantity=body.quantity, notes=body.notes, priority=body.priority_value,
                       promised_date=body.promised_date)
    result = svc.create_order(db_session(), g.actor, new, idempotency_key=key, fingerprint=fingerprint(data),
                              lead_days=settings().promise_lead_days, render=order_json)
    response = jsonify(result.body)
    response.status_code = result.status
    response.headers["Location"] = url_for("api.get_order", order_id=result.order_id)
    response.set_etag(order_etag(result.body))
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        order_created(result.body)
    return response


@bp.get("/orders")
def list_orders():
    status = query_params.choice("status", STATUS_VALUES)
    page = svc.list_orders(db_session(), g.actor, status=Status(status) if status else None,
                           updated_since=query_params.instant("updated_since"),
                           after=query_params.cursor("cursor"),
                           limit=query_params.integer("limit", default=50, low=1, high=200),
                           reference=query_params.matching("reference", inputs.REFERENCE_PATTERN,
                                                           max_length=inputs.MAX_REFERENCE_LENGTH,
                                                           what="a reference (letters, digits and . _ / -, "
                                                                "from a letter or digit)"),
                           partner_id=query_params.integer("partner_id", default=None, low=1, high=MAX_PARTNER_ID))
    response = jsonify({"items": [order_json(o) for o in page.items], "next_cursor": page.next_cursor})
    if page.next_cursor:
        args = {k: v for k, v in request.args.items() if k != "cursor"}
        response.headers["Link"] = f'<{url_for("api.list_orders", **args, cursor=page.next_cursor)}>; rel="next"'
    return response


@bp.get("/orders/<id:order_id>")
def get_order(order_id: int):
    """304 with no body while the order still matches `If-None-Match` (its tag follows every change of
    the representation, mes.domain.preconditions). The list has no tag of its own: `updated_since` is
    how a client reads only what changed there."""
    order = svc.get_order(db_session(), g.actor, order_id)
    body = order_json(order)
    tag = order_etag(body)
    response = Response(status=304) if request.if_none_match.contains_weak(tag) else jsonify(body)
    response.set_etag(tag)
    return response


@bp.get("/orders/<id:order_id>/status")
def get_status(order_id: int):
    """Small and cheap: served from the write-through cache, 304 when nothing changed."""
    entry = current_status(order_id)
    tag = etag(entry.id, entry.status_version)
    if request.if_none_match.contains(tag):
        response = Response(status=304)
    else:
        response = jsonify({"id": entry.id, "status": entry.status, "status_version": entry.status_version,
                            "updated_at": entry.updated_at})
    response.set_etag(tag)
    return response


def current_status(order_id: int) -> StatusEntry:
    """From the cache; a miss reads the primary (a replica may lag) and fills the cache."""
    cache, session = status_cache(), db_session()
    entry = cache.get(order_id) if cache_settler().cache_readable(session) else None
    if entry is None:
        use_primary(session)
        entry = cache_entry(svc.get_order(session, g.actor, order_id))
        cache.put(entry)
    elif not sees_order(g.actor, OrderFacts(Status(entry.status), entry.partner_id, None)):
        raise NotFound(f"Order {order_id} does not exist.")
    return entry


@bp.get("/orders/<id:order_id>/shipments")
def list_shipments(order_id: int):
    order, rows = shipments.of_order(db_session(), g.actor, order_id)
    return jsonify({"order_id": order.id, "status": order.status,
                    "shipped_quantity": sum(s.quantity for s in rows), "items": [shipment_json(s) for s in rows]})


@bp.post("/orders/<id:order_id>/cancel")
def cancel_order(order_id: int):
    """Safe to repeat: a cancelled order answers 200 again; with an Idempotency-Key, the first answer."""
    key = optional_key(request.headers.get("Idempotency-Key"))
    data = json_body(optional=True)
    body = validate(CancelRequest, data)
    return _end_state(order_id, cancellation.cancel, "cancel", key, data, body.reason)


@bp.post("/orders/<id:order_id>/deliver")
def deliver_order(order_id: int):
    """The partner confirms that a shipped order arrived; safe to repeat like a cancel."""
    key = optional_key(request.headers.get("Idempotency-Key"))
    data = json_body(optional=True)
    validate(DeliverRequest, data)
    return _end_state(order_id, cancellation.confirm_delivery, "deliver", key, data, None)


def _end_state(order_id: int, action, name: str, key: str | None, data: object, reason: str | None):
    """A cancel or a delivery: Idempotency-Key, If-Match and the answer are handled alike."""
    asked = cancellation.CancelRequest(reason=reason, key=key,
                                       fingerprint=fingerprint({name: order_id, "body": data}),
                                       if_match=if_match())
    answer = action(db_session(), g.actor, order_id, asked, render=order_json)
    if answer.change is not None:
        status_changed(answer.change)
    response = jsonify(answer.body)
    response.set_etag(order_etag(answer.body))
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def if_match() -> IfMatch | None:
    """The request's If-Match, or None without one."""
    if "If-Match" not in request.headers:
        return None
    tags = request.if_match
    # werkzeug reads an empty tag ("") as None: it names no version either way.
    return IfMatch(tuple(sorted(t for t in tags.as_set() if t)), any=tags.star_tag)


@bp.get("/status-changes")
def status_changes():
    session = db_session()
    page = feed.status_changes(session, g.actor, after=query_params.cursor("after"),
                               limit=query_params.integer("limit", default=100, low=1, high=500))
    shipped = feed.shipments_of_shipping(session, [ev for ev, _ in page.items])
    items = [event_json(ev, ref, feed.cursor_of(ev), shipped.get(ev.id)) for ev, ref in page.items]
    return jsonify({"items": items, "next_cursor": page.next_cursor})


@bp.get("/openapi.yaml")
@limiter.exempt
def openapi_yaml():
    return Response(OPENAPI_TEXT, mimetype="application/yaml")


@bp.get("/openapi.json")
@limiter.exempt
def openapi_json():
    return Response(json.dumps(OPENAPI), mimetype="application/json")
