"""WSGI entry points for gunicorn: `mes.wsgi:create_pool_app('operator')` or `('public')`."""
from __future__ import annotations

from dataclasses import replace

from flask import Flask

from . import create_app
from .config import Settings


def create_pool_app(pool: str) -> Flask:
    """The app with exactly one pool's blueprints, whatever MES_POOLS says."""
    return create_app(replace(Settings.from_env(), pools=(pool,)))
