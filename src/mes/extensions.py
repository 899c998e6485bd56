"""Flask extensions, created unbound here and bound to the app in the factory."""
from __future__ import annotations

from flask import g, request
from flask_limiter import Limiter
from flask_login import LoginManager
from flask_wtf import CSRFProtect


def rate_limit_key() -> str:
    """Per API client when the request carries a valid key, otherwise per source address."""
    client = g.get("client")
    return f"client:{client.client_id}" if client is not None else f"addr:{request.remote_addr}"


# The API writes its own RateLimit-* and Retry-After headers (mes.api.rate_limit_headers).
limiter = Limiter(key_func=rate_limit_key, headers_enabled=False)
login_manager = LoginManager()
csrf = CSRFProtect()
