"""Public REST API v1 for partners and the CRM (the public pool)."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from . import auth, rate_limit_headers, routes, webhooks  # noqa: E402,F401  (they register themselves on bp)
