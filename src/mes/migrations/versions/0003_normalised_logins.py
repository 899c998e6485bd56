"""operators' logins in their normalised form (mes.domain.logins), as the lookup and the throttle use it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

from mes.domain.logins import normalize_login

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    operators = sa.table("operators", sa.column("id", sa.Integer), sa.column("login", sa.String))
    rows = conn.execute(sa.select(operators.c.id, operators.c.login)).all()
    owners: dict[str, str] = {}
    for _id, login in rows:
        name = normalize_login(login)
        if name in owners:
            # Two accounts that only a spelling told apart: a person must decide which one stays.
            raise RuntimeError(f"operators {owners[name]!r} and {login!r} are the same login {name!r}; "
                               "rename one (UPDATE operators SET login = ...) and migrate again")
        owners[name] = login
    for _id, login in rows:
        if normalize_login(login) != login:
            conn.execute(operators.update().where(operators.c.id == _id).values(login=normalize_login(login)))


def downgrade() -> None:
    """The spelling as first typed is gone (display_name keeps it): nothing to undo."""
