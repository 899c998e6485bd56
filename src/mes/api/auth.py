"""Bearer-key authentication of API clients, before rate limiting and the views."""
from __future__ import annotations

import re

from flask import current_app, g, request

from ..domain.errors import Unauthorized
from ..key_cache import KeyCache
from ..reconnect import retry_while_unavailable
from ..services.accounts import KeyHolder, authenticate_key, hash_key, key_id
from ..web import db_session
from . import bp

PUBLIC_ENDPOINTS = {"api.openapi_yaml", "api.openapi_json"}
# "Bearer <key>": the scheme in any case, one or more spaces or tabs, a token68 (RFC 6750), blanks at the
# end. HAProxy's per-key rate limit reads the key with this same pattern (haproxy/haproxy.cfg.j2,
# bearer_regex), so no form the app accepts can count as a fresh key there.
BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+([A-Za-z0-9._~+/-]+=*)[ \t]*$")


def bearer_token(header: str) -> str | None:
    """The key of an Authorization header in the Bearer form, or None for anything else."""
    match = BEARER.fullmatch(header)
    return match.group(1) if match else None


@bp.before_app_request
def authenticate_api_client():
    """Registered app-wide so that it runs before flask-limiter, which keys limits on the client."""
    if request.blueprint != "api" or request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return
    key = bearer_token(request.headers.get("Authorization", ""))
    if key is None:
        raise Unauthorized("Send your API key as 'Authorization: Bearer <key>'.")
    key_hash = hash_key(key)
    holder = holder_of(key, key_hash)
    if holder is None:
        raise Unauthorized("The API key is unknown or revoked.")
    g.client = holder
    g.key_id = key_id(key_hash)  # the client's name in the per-client metrics, as in HAProxy's log
    g.actor = holder.actor


def holder_of(key: str, key_hash: str) -> KeyHolder | None:
    """From this process's key cache when it is fresh, else from the database (then remembered)."""
    cache: KeyCache = current_app.extensions["mes_key_cache"]
    holder = cache.get(key_hash)
    if holder is None:
        # A read: safe to repeat on a fresh connection whatever the request's method.
        holder = retry_while_unavailable(lambda: authenticate_key(db_session(), key, key_hash=key_hash))
        if holder is not None:
            cache.put(key_hash, holder)
    return holder
