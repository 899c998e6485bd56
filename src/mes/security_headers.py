"""Headers that tell browsers and caches what they may do with our answers.

Operator pages: a Content-Security-Policy that allows scripts and styles from our own origin only (no
inline code, so an injected fragment cannot run), no framing (clickjacking), referrers only to ourselves,
and no copy of a logged-in page in any cache. The API: private answers (anything for a key holder) are
never stored by a cache. Every answer: nosniff, so a body is only ever read as its declared type.
"""
from __future__ import annotations

from flask import Flask, Response, g, request

from .errors import wants_problem_json

OPERATOR_CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
])
STATIC_ENDPOINTS = {"operator.static"}


def init_security_headers(app: Flask) -> None:
    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        if not wants_problem_json():  # an operator page (or its redirect, or its stylesheet)
            headers["Content-Security-Policy"] = OPERATOR_CSP
            headers["X-Frame-Options"] = "DENY"  # for browsers that predate frame-ancestors
            headers["Referrer-Policy"] = "same-origin"
            if request.endpoint not in STATIC_ENDPOINTS:
                headers["Cache-Control"] = "no-store"
        elif g.get("client") is not None:  # an API answer to a key holder: its own orders
            headers["Cache-Control"] = "no-store"
        return response
