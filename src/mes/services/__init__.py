"""Use cases over the database: each takes a SQLAlchemy session and an Actor, never a request."""
