"""Webhook endpoints of API v1: register, list, change, delete, rotate the secret, read the delivery log,
replay a delivery or a time range, send a test event. A partner sees only its own endpoints (mes.services.webhooks).

Every POST takes an Idempotency-Key (a register and a range replay require one, as an order's create does:
a retry without one would register a second endpoint or queue the range twice); a retry with the key gets
the first answer back, marked `Idempotent-Replayed: true`, and changes nothing."""
from __future__ import annotations

from datetime import timedelta

from flask import Response, g, jsonify, request, url_for

from .. import query_params
from ..domain.errors import IdempotencyKeyMissing, ValidationFailed
from ..domain.idempotency import check_key, fingerprint, optional_key
from ..models import WebhookDelivery, WebhookEndpoint, iso
from ..services import webhooks as svc
from ..web import db_session, settings
from . import bp
from .schemas import json_body

CREATE_FIELDS = {"url", "event_types", "description", "active"}


def endpoint_json(endpoint: WebhookEndpoint) -> dict:
    base = f"/api/v1/webhook-endpoints/{endpoint.id}"
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": endpoint.types,
        "description": endpoint.description,
        "active": endpoint.active,
        "partner_id": endpoint.partner_id,
        "failing_since": iso(endpoint.failing_since) if endpoint.failing_since else None,
        "previous_secret_expires_at": iso(endpoint.previous_secret_until) if endpoint.previous_secret_until else None,
        "created_at": iso(endpoint.created_at),
        "updated_at": iso(endpoint.updated_at),
        "links": {"self": base, "deliveries": f"{base}/deliveries"},
    }


def delivery_json(delivery: WebhookDelivery) -> dict:
    return {
        "id": delivery.id,
        "event_id": delivery.event.msg_id,
        "event_type": delivery.event.type,
        "state": delivery.state,
        "replay": delivery.replay,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.state == "pending" and delivery.next_attempt_at
        else None,
        "delivered_at": iso(delivery.delivered_at) if delivery.delivered_at else None,
        "created_at": iso(delivery.created_at),
        "attempt_log": [{"attempted_at": iso(a.attempted_at), "status_code": a.status_code,
                         "latency_ms": a.latency_ms, "error": a.error, "response_excerpt": a.response_excerpt}
                        for a in delivery.attempt_log],
    }


def _object_body() -> dict:
    data = json_body()
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.",
                               errors=[{"field": "(body)", "message": "expected an object"}])
    return data


def with_secret(created: svc.Created) -> dict:
    return endpoint_json(created.endpoint) | {"secret": created.secret}


def _once(asked: object) -> svc.Once:
    """This request's Idempotency-Key, if sent, and the fingerprint of what it asks (`asked`)."""
    return svc.Once(optional_key(request.headers.get("Idempotency-Key")), fingerprint(asked))


def _answered(answer: svc.Answer, status: int) -> Response:
    response = jsonify(answer.body)
    response.status_code = status
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/webhook-endpoints")
def create_webhook_endpoint():
    """A key is required: a retried register without one would make a second endpoint, and every event
    would then be delivered twice."""
    key = check_key(request.headers.get("Idempotency-Key"),
                    "Registering a webhook endpoint needs an Idempotency-Key header (for example a UUID) so that "
                    "a retry never registers it twice.")
    data = _object_body()
    unknown = sorted(set(data) - CREATE_FIELDS)
    if unknown:
        raise ValidationFailed(f"Some fields are invalid: {', '.join(unknown)}.",
                               errors=[{"field": f, "message": "may not be set by clients"} for f in unknown])
    answer = svc.create_endpoint(db_session(), g.actor, data, settings().webhook_address_policy, with_secret,
                                 once=svc.Once(key, fingerprint({"register": data})))
    response = _answered(answer, 201)
    response.headers["Location"] = url_for("api.webhook_endpoint", endpoint_id=answer.body["id"])
    return response


@bp.get("/webhook-endpoints")
def list_webhook_endpoints():
    return jsonify({"items": [endpoint_json(e) for e in svc.list_endpoints(db_session(), g.actor)]})


# One rule for the three methods: an id out of range is then a 404 whatever the method, not a 405 from
# werkzeug finding another method's rule with the same path.
@bp.route("/webhook-endpoints/<id:endpoint_id>", methods=["GET", "PATCH", "DELETE"])
def webhook_endpoint(endpoint_id: int):
    session = db_session()
    if request.method == "PATCH":
        endpoint = svc.update_endpoint(session, g.actor, endpoint_id, _object_body(), settings().webhook_address_policy)
        return jsonify(endpoint_json(endpoint))
    if request.method == "DELETE":
        svc.delete_endpoint(session, g.actor, endpoint_id)
        return Response(status=204)
    return jsonify(endpoint_json(svc.get_endpoint(session, g.actor, endpoint_id)))


@bp.post("/webhook-endpoints/<id:endpoint_id>/rotate-secret")
def rotate_webhook_secret(endpoint_id: int):
    """The new secret, shown once (and to a retry with the same key); the old one keeps signing beside it
    for the overlap."""
    once = _once({"rotate-secret": endpoint_id})
    if request.content_length or request.data:
        json_body()  # a body is not needed, but a malformed one is still refused
    overlap = timedelta(hours=settings().webhook_secret_overlap_hours)
    return _answered(svc.rotate_secret(db_session(), g.actor, endpoint_id, overlap, with_secret, once=once), 200)


@bp.get("/webhook-endpoints/<id:endpoint_id>/deliveries")
def list_webhook_deliveries(endpoint_id: int):
    page = svc.deliveries(db_session(), g.actor, endpoint_id, after=query_params.cursor("cursor"),
                          limit=query_params.integer("limit", default=50, low=1, high=200))
    return jsonify({"items": [delivery_json(d) for d in page.items], "next_cursor": page.next_cursor})


@bp.post("/webhook-endpoints/<id:endpoint_id>/deliveries/<id:delivery_id>/replay")
def replay_webhook_delivery(endpoint_id: int, delivery_id: int):
    once = _once({"replay-delivery": [endpoint_id, delivery_id]})
    return _answered(svc.replay(db_session(), g.actor, endpoint_id, delivery_id, delivery_json,
                                retention=settings().webhook_retention, once=once), 202)


def replay_limits() -> svc.ReplayLimits:
    cfg = settings()
    return svc.ReplayLimits(max_days=cfg.webhook_replay_max_days, max_events=cfg.webhook_replay_max_events,
                            retention=cfg.webhook_retention)


def range_json(queued: svc.RangeQueued) -> dict:
    return {"endpoint_id": queued.endpoint_id, "from": iso(queued.range.start), "to": iso(queued.range.end),
            "event_types": list(queued.range.types), "queued": queued.queued,
            "links": {"deliveries": f"/api/v1/webhook-endpoints/{queued.endpoint_id}/deliveries"}}


@bp.post("/webhook-endpoints/<id:endpoint_id>/replay")
def replay_webhook_range(endpoint_id: int):
    """The events of a time range again, one delivery each. A key is required: a retried bulk replay
    without one would queue every event twice."""
    key = optional_key(request.headers.get("Idempotency-Key"))
    if key is None:
        raise IdempotencyKeyMissing("A replay needs an Idempotency-Key header (for example a UUID) so that a "
                                    "retry never queues the range twice.")
    data = _object_body()
    answer = svc.replay_range(db_session(), g.actor, endpoint_id, data, replay_limits(), range_json,
                              once=svc.Once(key, fingerprint({"replay": endpoint_id, "body": data})))
    return _answered(answer, 202)


@bp.post("/webhook-endpoints/<id:endpoint_id>/test")
def send_webhook_test(endpoint_id: int):
    once = _once({"test": endpoint_id})
    return _answered(svc.send_test(db_session(), g.actor, endpoint_id, delivery_json, once=once), 202)
