"""Gunicorn settings of the public pool: `gunicorn -c python:mes.gunicorn.public`.
Shorter timeout: a partner request that runs this long is better refused than waited on."""
from mes.gunicorn.common import pool_settings

globals().update(pool_settings("public", bind="127.0.0.1:8002", timeout=15, workers=3))
