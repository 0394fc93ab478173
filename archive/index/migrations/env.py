"""Alembic environment: migrations run on the connection the archive hands over
(``config.attributes["connection"]``, see archive.index.migrate); there is no alembic.ini."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# render_as_batch: SQLite alters tables by copying them (ALTER TABLE is limited there).
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
