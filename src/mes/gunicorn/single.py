"""Gunicorn settings of the "before" topology: one pool serving operators and partners alike
(`make up TOPOLOGY=single`), kept only to measure what the split buys."""
from mes.gunicorn.common import pool_settings

globals().update(pool_settings("operator,public", bind="127.0.0.1:8301", timeout=30, workers=6))
