"""What reaches a log: secrets masked wherever they appear, one line per request, quiet probes."""
from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager

import pytest

from mes import create_app
from mes.config import Settings
from mes.logs import RedactingJsonFormatter, should_log
from mes.redact import MASK, redact_headers, redact_query, redact_text

KEY = "mes_0123abcd_Zx9-Qw_ErTyUiOpAsDfGhJkL1234567890abcdefgh"


@pytest.mark.parametrize("query, expected", [
    ("limit=5&cursor=abc", "limit=5&cursor=abc"),
    ("api_key=s3cr3t", f"api_key={MASK}"),
    ("limit=1&key=s3cr3t&status=queued", f"limit=1&key={MASK}&status=queued"),
    ("TOKEN=a&Password=b&client_secret=c&x-api-key=d", f"TOKEN={MASK}&Password={MASK}&client_secret={MASK}&x-api-key={MASK}"),
    ("api%5Fkey=s3cr3t", f"api%5Fkey={MASK}"),
    ("access_token=a&refresh_token=b", f"access_token={MASK}&refresh_token={MASK}"),
    ("key", "key"),  # a name without a value holds nothing
    ("", ""),
])
def test_redact_query_masks_the_values_of_secret_parameters(query, expected):
    assert redact_query(query) == expected


@pytest.mark.parametrize("text", [
    "GET /api/v1/orders?limit=1&api_key=s3cr3t HTTP/1.1",
    "Invalid request: Authorization: Bearer s3cr3t",
    "headers {'Authorization': 'Bearer s3cr3t', 'Accept': '*/*'}",
    "bearer\ts3cr3t was refused",
    "Bearer    s3cr3t was refused",
    "Cookie: mes_operator_session=s3cr3t; theme=dark",
    "Set-Cookie: session=s3cr3t; HttpOnly",
    "login form password=s3cr3t&login=olga",
    "Proxy-Authorization: Basic czNjcjN0",
    "Error connecting to redis://mes:s3cr3t@10.0.0.5:6379/0",
    "DATABASE_URL=postgresql+psycopg2://mes_app:s3cr3t@127.0.0.1:9999/mes",
])
def test_redact_text_masks_credentials_in_free_text(text):
    masked = redact_text(text)
    assert "s3cr3t" not in masked and "czNjcjN0" not in masked and MASK in masked


def test_redact_text_masks_our_keys_anywhere_but_keeps_their_prefix():
    masked = redact_text(f"client sent {KEY} in the body")
    assert KEY not in masked and "mes_0123abcd_" in masked


def test_redact_text_keeps_ordinary_text():
    text = 'GET /api/v1/orders?limit=5&status=queued "quality check" reference=PO-42 took 12 ms'
    assert redact_text(text) == text


def test_redact_headers_masks_credentials_and_cookies():
    headers = {"Authorization": "Bearer x", "Cookie": "a=b", "X-API-Key": "k", "Accept": "application/json"}
    assert redact_headers(headers) == {"Authorization": MASK, "Cookie": MASK, "X-API-Key": MASK,
                                       "Accept": "application/json"}


@pytest.mark.parametrize("endpoint, status, ms, logged", [
    ("api.list_orders", 200, 3, True),
    ("api.list_orders", 404, 3, True),
    (None, 404, 1, True),
    ("health.ready", 200, 3, False),
    ("health.live", 200, 3, False),
    ("prometheus_metrics", 200, 40, False),
    ("health.ready", 503, 3, True),
    ("health.ready", 200, 2500, True),
])
def test_should_log_skips_only_probes_that_succeeded_in_time(endpoint, status, ms, logged):
    assert should_log(endpoint, status, ms) is logged


def _format(record: logging.LogRecord) -> dict:
    return json.loads(RedactingJsonFormatter("{message}", style="{").format(record))


def test_the_formatter_redacts_message_arguments_extras_and_tracebacks():
    try:
        raise ValueError(f"upstream refused https://erp.example/x?token={KEY}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, "Invalid request from %s: %s",
                               ("10.0.0.1", "Authorization: Bearer s3cr3t"), exc_info)
    record.headers = {"Cookie": "session=s3cr3t", "Accept": "*/*"}
    line = _format(record)
    assert "s3cr3t" not in json.dumps(line) and KEY not in json.dumps(line)
    assert line["headers"]["Accept"] == "*/*" and "ValueError" in line["exc_info"]


class _Lines(logging.Handler):
    """Collects the request lines as the production formatter writes them."""

    def __init__(self):
        super().__init__()
        self.setFormatter(RedactingJsonFormatter("{message}", style="{"))
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


@contextmanager
def request_lines():
    handler = _Lines()
    logger = logging.getLogger("mes.request")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # the test settings quieten the root logger to WARNING
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_request_line_has_the_query_redacted(client, accounts_):
    partner = accounts_.partner()
    with request_lines() as lines:
        client.get(f"/api/v1/orders?limit=1&api_key={KEY}", headers={**partner, "X-Request-ID": "q-1"})
    line = next(x for x in lines if x["request_id"] == "q-1")
    assert line["query"] == f"limit=1&api_key={MASK}" and KEY not in json.dumps(lines)


def test_passing_probes_are_not_logged_and_failing_ones_are(client, tmp_path):
    broken = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'missing' / 'mes.db'}", secret_key="t",
                                 log_level="WARNING"))
    with request_lines() as lines:
        assert client.get("/healthz/ready").status_code == 200
        assert client.get("/healthz/live").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert broken.test_client().get("/healthz/ready").status_code == 503
    assert [(x["rule"], x["status"]) for x in lines] == [("/healthz/ready", 503)]
