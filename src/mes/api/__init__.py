"""Public REST API v1 for partners and the CRM (the public pool)."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from . import auth, routes  # noqa: E402,F401  (routes register themselves on bp)
