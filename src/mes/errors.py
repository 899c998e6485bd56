"""The one place that turns errors into responses: problem+json for the API, a page for the UI."""
from __future__ import annotations

import logging

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from flask_limiter.errors import RateLimitExceeded
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from .domain.errors import DomainError
from .reconnect import RETRY_AFTER_SECONDS, unavailable

log = logging.getLogger("mes.errors")

PROBLEM_TYPE = "/problems/{slug}"
_HTTP_SLUGS = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
               405: "method-not-allowed", 413: "body-too-large", 415: "unsupported-media-type",
               429: "rate-limited", 500: "internal-error", 503: "unavailable"}


def wants_problem_json() -> bool:
    """API callers get problem+json; browsers on the operator pool get a page."""
    if "operator" not in current_app.blueprints:
        return True
    return request.blueprint != "operator" and not request.path.startswith("/operator")


def problem(status: int, slug: str, title: str, detail: str, **extensions) -> Response:
    body = {"type": PROBLEM_TYPE.format(slug=slug), "title": title, "status": status, "detail": detail,
            "instance": request.path, "request_id": g.get("request_id")}
    body.update({k: v for k, v in extensions.items() if v is not None})
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def _page(status: int, title: str, detail: str) -> Response:
    if g.get("_login_user") is None:
        # The operator was not loaded before the error (the database may be what failed): the page is
        # shown as to a visitor instead of trying the database again.
        g._login_user = current_app.login_manager.anonymous_user()
    html = render_template("operator/error.html", status=status, title=title, detail=detail,
                           retry_after=RETRY_AFTER_SECONDS)
    return Response(html, status=status, mimetype="text/html")


def render_error(status: int, slug: str, title: str, detail: str, **extensions) -> Response:
    if wants_problem_json():
        return problem(status, slug, title, detail, **extensions)
    return _page(status, title, detail)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(err: DomainError):
        response = render_error(err.status, err.slug, err.title, err.detail, **err.extensions)
        if err.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="mes", error="invalid_token"'
        return response

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(err: RateLimitExceeded):
        # flask-limiter adds Retry-After and the RateLimit-* headers after this handler.
        return render_error(429, "rate-limited", "Too many requests",
                            f"Rate limit of {err.description} exceeded; retry after the Retry-After delay.")

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        status = err.code or 500
        response = render_error(status, _HTTP_SLUGS.get(status, "http-error"), err.name, err.description)
        if status == 405 and err.response is None:
            allowed = getattr(err, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(DBAPIError)
    def _database(err: DBAPIError):
        if not unavailable(err):
            return _unexpected(err)
        # The database is switching nodes (reconnect.py) and this request could not be repeated, or
        # repeating it did not help; whether a write was applied is for the client to check.
        log.warning("database unavailable", extra={"request_id": g.get("request_id"),
                                                   "error": type(err.orig).__name__})
        response = render_error(503, "database-unavailable", "Service unavailable",
                                "The database is not available right now (it may be switching to another "
                                "node); try again after the Retry-After delay.")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return render_error(500, "internal-error", "Internal server error",
                            "Something went wrong on our side; the request id helps us find it.")
