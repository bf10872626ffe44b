"""Alembic environment: run migrations on the connection :func:`hub_service.db.upgrade` gives.

There is no ``alembic.ini``: the service brings its database to the newest schema itself
when it starts, inside one transaction, so an interrupted upgrade changes nothing.
"""

from __future__ import annotations

from alembic import context

from hub_service.db._models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
