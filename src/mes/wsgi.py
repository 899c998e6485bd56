"""WSGI entry points for gunicorn: `mes.wsgi:create_pool_app('operator')` or `('public')`."""
from __future__ import annotations

import gc
from dataclasses import replace

from flask import Flask

from . import create_app
from .config import Settings


def create_pool_app(pools: str) -> Flask:
    """The app with exactly these pools' blueprints ('operator', 'public', or both, comma-separated)."""
    app = create_app(replace(Settings.from_env(), pools=tuple(pools.split(","))))
    # Objects made at start-up live for the whole process: keep them out of the collector's
    # full passes, which otherwise cost a request ~40 ms now and then (see BENCHMARKS.md).
    gc.collect()
    gc.freeze()
    return app
