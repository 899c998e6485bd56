"""Masking of secrets before anything is logged: plain functions, no Flask, no logging setup.

A key sent the wrong way (`?api_key=`), a pasted `Authorization` header or a cookie in an error message
must not end up in a log file, a journal or Loki, where far more people can read it than should.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_plus

MASK = "[redacted]"

# Query parameter names that carry credentials (compared lower-case, "-" read as "_").
SECRET_PARAMS = frozenset({
    "api_key", "apikey", "key", "token", "access_token", "refresh_token", "id_token", "auth", "authorization",
    "password", "passwd", "pwd", "pass", "secret", "client_secret", "session", "sessionid", "signature", "sig",
    "csrf_token",
})
SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password", "_session")
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"})

# Our own API keys ("mes_<8 hex>_<random>"): masked wherever they appear; the prefix names the key, so it stays.
_API_KEY = re.compile(r"\b(mes_[0-9a-f]{8}_)[A-Za-z0-9_-]{16,}")
# Credentials after an auth scheme: "Bearer <key>", "Basic <base64>", also with tabs or several spaces.
_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest|token)([ \t]+)[A-Za-z0-9._~+/=-]+")
# A password inside a URL ("redis://mes:<password>@host", DATABASE_URL): the user name stays.
_URL_PASSWORD = re.compile(r"(?i)\b(?P<lead>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@")
# name=value inside a URL or a form body ("?a=1&api_key=...", "key=...; other").
_PARAM = re.compile(r"(?P<lead>^|[?&;\s\"'])(?P<name>[^=&;?#\s\"']+)=(?P<value>[^&;#\s\"']*)")
# A header written out in text ("Cookie: a=b; c=d", "'authorization': 'Bearer x'"): mask to the end of it.
_HEADER = re.compile(r"(?i)\b(?P<name>proxy-authorization|authorization|set-cookie|cookie|x-api-key)"
                     r"(?P<sep>[\"']?\s*[:=]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\r\n,}]*)")


def is_secret_name(name: str) -> bool:
    """Whether a query or form parameter of this name holds a credential."""
    normal = unquote_plus(name).strip().lower().replace("-", "_")
    return normal in SECRET_PARAMS or normal.endswith(SECRET_SUFFIXES) or "password" in normal or "secret" in normal


def redact_query(query: str) -> str:
    """A query string with the values of secret parameters masked; order and encoding are kept."""
    if not query:
        return query
    parts = []
    for pair in query.split("&"):
        name, sep, _value = pair.partition("=")
        parts.append(f"{name}={MASK}" if sep and is_secret_name(name) else pair)
    return "&".join(parts)


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers with credentials and cookies masked, for a log line that wants to show them."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name: (MASK if name.lower() in SECRET_HEADERS else value) for name, value in items}


def redact_text(text: str) -> str:
    """Free text (a message, a request line, a traceback) with every secret it may hold masked."""
    if not text:
        return text
    text = _API_KEY.sub(lambda m: m.group(1) + MASK, text)
    text = _URL_PASSWORD.sub(lambda m: m.group("lead") + MASK + "@", text)
    text = _HEADER.sub(lambda m: m.group("name") + m.group("sep") + MASK, text)
    text = _SCHEME.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _PARAM.sub(lambda m: (m.group("lead") + m.group("name") + "=" + MASK)
                      if is_secret_name(m.group("name")) else m.group(0), text)


def redact_value(value):
    """Any value of a log record: strings are redacted, containers walked, everything else kept."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: (MASK if isinstance(k, str) and k.lower() in SECRET_HEADERS else redact_value(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value
