"""Alembic environment: the URL comes from the caller (mes.migrate), the schema from mes.models."""
from alembic import context
from sqlalchemy import create_engine

from mes.migrate import check_crm_publication
from mes.models import Base

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
            at_head = set(context.get_context().get_current_heads()) == set(context.script.get_heads())
            if connection.dialect.name == "postgresql" and at_head:
                # Inside the migrations' transaction: a change that breaks the CRM's publication is undone.
                check_crm_publication(connection)
    engine.dispose()


run_migrations()
