"""Schema revisions of the index (Alembic, archive/index/migrations): a new database is created
at the head revision; an older one is brought to it by ``imaging-archive db upgrade``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from archive.index.schema import schema_info

# The revision of each schema_info version written before the index had Alembic revisions.
_LEGACY = {1: "0001", 3: "0002"}


def _config(conn: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def current(conn: Connection) -> str | None:
    """The database's revision: Alembic's, else that of its schema_info version, else None (a
    new database, or one of a version no revision describes: "legacy-N")."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is not None:
        return revision
    if not inspect(conn).has_table("schema_info"):
        return None
    versions = conn.execute(select(schema_info.c.version)).scalars().all()
    if not versions:
        return None
    return _LEGACY.get(max(versions), f"legacy-{max(versions)}")


def lock(conn: Connection) -> None:
    """Make the caller's transaction the only one changing this database's schema until it ends
    (PostgreSQL: several processes or hosts may start on a new database, or upgrade it, at once;
    one creates it and the others then find it made). SQLite's writers are serialized already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock("
                          "hashtext('imaging-archive schema ' || current_database()))"))


def stamp_head(conn: Connection) -> None:
    """Record a database just created from the current schema as being at the head revision."""
    command.stamp(_config(conn), "head")


def upgrade(conn: Connection) -> tuple[str | None, str]:
    """Bring the database to the head revision; (revision before, after)."""
    lock(conn)
    before = current(conn)
    if before is not None and before.startswith("legacy-"):
        raise ValueError(f"the index is at schema version {before[7:]}, written by a development "
                         "build that no revision describes: rebuild it from the stored files")
    cfg = _config(conn)
    if before is not None and MigrationContext.configure(conn).get_current_revision() is None:
        command.stamp(cfg, before)  # an index from before revisions: say where it stands
    command.upgrade(cfg, "head")
    return before, head()
