"""Gunicorn settings of the operator pool: `gunicorn -c python:mes.gunicorn.operator`."""
from mes.gunicorn.common import pool_settings

globals().update(pool_settings("operator", bind="127.0.0.1:8001", timeout=30, workers=3))
