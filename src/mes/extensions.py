"""Flask extensions, created unbound here and bound to the app in the factory."""
from __future__ import annotations

from flask import current_app, g, request
from flask_limiter import Limiter
from flask_login import LoginManager
from flask_wtf import CSRFProtect

from .domain.rate_budget import share_of_limit


def rate_limit_key() -> str:
    """Per API client when the request carries a valid key, otherwise per source address."""
    client = g.get("client")
    return f"client:{client.client_id}" if client is not None else f"addr:{request.remote_addr}"


# The API writes its own RateLimit-* and Retry-After headers (mes.api.rate_limit_headers).
limiter = Limiter(key_func=rate_limit_key, headers_enabled=False)
login_manager = LoginManager()
csrf = CSRFProtect()


def budget(limit: str) -> str:
    """The limit to count a request against. While Redis is unreachable flask-limiter counts in this
    process's memory (its fallback limiter has a storage of its own): then each process of the pool gets
    its share, so that the pool as a whole still allows about `limit`."""
    if limiter.limiter.storage is limiter.storage:
        return limit
    return share_of_limit(limit, current_app.extensions["mes_settings"].pool_processes)
