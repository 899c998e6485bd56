"""Operator UI: server-rendered pages for the shop floor (the operator pool)."""
from flask import Blueprint

bp = Blueprint("operator", __name__, url_prefix="/operator", template_folder="templates",
               static_folder="static", static_url_path="/static")

from . import auth, board, cancel, holds, people, production, reason_codes, shipping, views  # noqa: E402,F401  (views register themselves on bp)
