"""Bearer-key authentication of API clients, before rate limiting and the views."""
from __future__ import annotations

from flask import g, request

from ..domain.errors import Unauthorized
from ..services.accounts import authenticate_key, client_actor
from ..web import db_session
from . import bp

PUBLIC_ENDPOINTS = {"api.openapi_yaml", "api.openapi_json"}


@bp.before_app_request
def authenticate_api_client():
    """Registered app-wide so that it runs before flask-limiter, which keys limits on the client."""
    if request.blueprint != "api" or request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Send your API key as 'Authorization: Bearer <key>'.")
    client = authenticate_key(db_session(), key.strip())
    if client is None:
        raise Unauthorized("The API key is unknown or revoked.")
    g.client = client
    g.actor = client_actor(client)
