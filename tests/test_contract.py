"""The API against its OpenAPI document (schemathesis, in-process over WSGI), for a partner key and a
CRM key: every operation with generated valid and invalid requests, then sequences that follow the
document's links (the stateful phase). Every check is on: no input may cause a 5xx, and every
response must be one the document declares, with its headers, content type and schema."""
from __future__ import annotations

import os
from uuid import uuid4

import hypothesis
import pytest
import schemathesis
from conftest import auth, create_order
from schemathesis.config import SchemathesisConfig

OPENAPI_URL = "/api/v1/openapi.json"
CI = os.environ.get("CI") == "true"
EXAMPLES = 25  # per operation and key, besides the coverage phase's cases
STATEFUL_SCENARIOS = 15
STATEFUL_STEPS = 6


def contract_config(key: str) -> SchemathesisConfig:
    """Every check, with the statuses the document allows where a rule needs state to decide."""
    config = {
        "generation": {"max-examples": EXAMPLES, "deterministic": CI},
        "checks": {"enabled": True},
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
        "auth": {"openapi": {"apiKey": {"bearer": key}}},
        "operations": [{
            # A schema-valid order can still break a rule the schema cannot hold: a promised date
            # inside the factory's lead time, or an Idempotency-Key reused with another body (422).
            "include-operation-id": "createOrder",
            "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "409", "422", "429"]}},
        }, {
            # An If-Match made up is schema-valid and names no version of the order (412); a made-up
            # Idempotency-Key may be one the create used (422); the order may be past cancelling (409).
            # The same for a delivery confirmation, whose order is seldom shipped (409).
            "include-operation-id": ["cancelOrder", "deliverOrder"],
            "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "412", "422", "429"]}},
        }, {
            # A cursor is opaque: one made up is schema-valid and refused as /problems/bad-cursor
            # (checked by only_cursors_refused_when_valid).
            "include-operation-id": ["listOrders", "listStatusChanges"],
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "429"]}},
        }, {
            # A schema-valid URL may still be refused: not https, or a host that is not public (or does
            # not resolve); the endpoint named may be another partner's, or deleted meanwhile (404); a
            # made-up Idempotency-Key may be one another request used (422), or the key of a register
            # whose endpoint was deleted since (409).
            "include-operation-id": ["createWebhookEndpoint", "updateWebhookEndpoint"],
            "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "404", "409", "422", "429"]}},
        }, {
            # A schema-valid range may still be refused: longer than allowed, older than the retention,
            # a type the endpoint does not hear, more events than the cap, a reused key (422); the
            # endpoint may be another partner's (404) or inactive (409).
            "include-operation-id": ["replayWebhookRange"],
            "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "404", "409", "422", "429"]}},
        }, {
            # A made-up Idempotency-Key may be one another request used (422); the endpoint may be another
            # partner's (404); a delivery's event may be past the retention (409).
            "include-operation-id": ["rotateWebhookSecret", "replayWebhookDelivery", "sendWebhookTest"],
            "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "404", "409", "422", "429"]}},
        }, {
            "include-operation-id": ["listWebhookDeliveries"],
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "404", "429"]}},
        }],
    }
    if CI:
        config["seed"] = 20260131  # the same cases on every run
    return SchemathesisConfig.from_dict(config)


@pytest.fixture(params=["partner", "crm"])
def api_key(request, accounts_, client) -> str:
    """A key of each scope; a few orders exist (one cancelled), so that generated ids sometimes hit
    one, the feed has items and links have something to follow."""
    partner = accounts_.partner()
    for i in range(3):
        create_order(client, partner, reference=f"SEED-{i}")
    client.post("/api/v1/orders/1/cancel", json={"reason": "seeded"}, headers=auth(partner))
    holder = partner if request.param == "partner" else accounts_.crm()
    return holder["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def contract_schema(app, api_key):
    return schemathesis.openapi.from_wsgi(OPENAPI_URL, app, config=contract_config(api_key))


schema = schemathesis.pytest.from_fixture("contract_schema")


def only_cursors_refused_when_valid(ctx, response, case):
    """The one 400 a schema-valid request may get: a cursor that is not one of ours."""
    if case.meta is not None and case.meta.generation.mode.is_positive and response.status_code == 400:
        problem_type = response.json().get("type")
        assert problem_type == "/problems/bad-cursor", f"valid request refused as {problem_type}"


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_matches_the_document(case):
    case.call_and_validate(additional_checks=[only_cursors_refused_when_valid])


def test_linked_sequences_match_the_document(contract_schema):
    """Create, read, cancel and follow the feed in the orders the document's links allow."""

    class Machine(contract_schema.as_state_machine()):
        def before_call(self, case):
            """A valid key of a webhook POST becomes a key of its own. The generator repeats keys across
            scenarios, and a repeated key replays (or refuses) an earlier scenario's answer: a register
            then answers what ran before, not what this scenario sent, which the state machine cannot
            tolerate (hypothesis' FlakyStrategyDefinition). The replay rules are tested in test_webhooks."""
            key = (case.headers or {}).get("Idempotency-Key")
            if case.path.startswith("/webhook-endpoints") and valid_key(key):
                case.headers["Idempotency-Key"] = uuid4().hex

    Machine.run(settings=hypothesis.settings(
        max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS, deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate],
        derandomize=CI, database=None))


def valid_key(key: object) -> bool:
    from mes.domain import idempotency
    from mes.domain.errors import DomainError

    try:
        return isinstance(key, str) and bool(idempotency.check_key(key))
    except DomainError:
        return False


def test_the_document_states_the_rules_the_server_applies():
    """The patterns and limits in the document are the ones the input rules use, not copies that drift."""
    from mes.api.routes import OPENAPI
    from mes.domain import idempotency, inputs
    from mes.services import cursors

    schemas = OPENAPI["components"]["schemas"]
    order = schemas["OrderCreate"]["properties"]
    assert order["material"]["pattern"] == inputs.SINGLE_LINE_PATTERN
    assert order["notes"]["pattern"] == schemas["CancelRequest"]["properties"]["reason"]["pattern"] \
        == inputs.MULTI_LINE_PATTERN
    assert (schemas["Cursor"]["pattern"], schemas["Cursor"]["maxLength"]) == (cursors.PATTERN, cursors.MAX_LENGTH)
    key = OPENAPI["components"]["parameters"]["IdempotencyKey"]["schema"]
    assert (key["pattern"], key["maxLength"]) == (idempotency.KEY_PATTERN, idempotency.MAX_KEY_LENGTH)
    assert OPENAPI["components"]["parameters"]["OrderId"]["schema"]["maximum"] == inputs.MAX_ROW_ID
    assert schemas["WebhookEndpointCreate"]["properties"]["description"]["pattern"] == inputs.SINGLE_LINE_PATTERN
    reference = [p for p in OPENAPI["paths"]["/orders"]["get"]["parameters"] if p["name"] == "reference"][0]["schema"]
    assert (order["reference"]["pattern"], order["reference"]["maxLength"]) == (
        reference["pattern"], reference["maxLength"]) == (inputs.REFERENCE_PATTERN, inputs.MAX_REFERENCE_LENGTH)
    for name in ("IdempotencyKeyOptional", "IdempotencyKeyRegister", "IdempotencyKeyWebhook", "IdempotencyKeyReplay"):
        other = OPENAPI["components"]["parameters"][name]["schema"]
        assert (other["pattern"], other["maxLength"]) == (key["pattern"], key["maxLength"]), name
