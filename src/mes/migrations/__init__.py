"""Alembic migrations of the MES schema (run with `mes migrate`)."""
