"""Gunicorn configurations, one module per pool: `gunicorn -c python:mes.gunicorn.operator`."""
