"""The service's metadata database: deployments and their revisions (SQLAlchemy 2).

SQLite under the service's data directory by default, PostgreSQL (or anything SQLAlchemy
speaks) through ``HUBSERVE_DATABASE_URL``. The schema is managed by Alembic: :meth:`Database.
upgrade` brings any database to the newest revision when the service starts, so an upgrade of
hubserve needs no manual step.

Access is synchronous (SQLAlchemy sessions); the async parts of the service call it through a
worker thread (:meth:`Database.run`), so a slow database never stalls the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ._models import Base, Deployment, Revision, utcnow

__all__ = ["Base", "Database", "Deployment", "Revision", "utcnow"]

T = TypeVar("T")
_MIGRATIONS = str(Path(__file__).with_name("migrations"))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """An engine, a session factory and the schema migrations for one database URL."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(parsed, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", _MIGRATIONS)
        return config

    def upgrade(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is there already)."""
        config = self._alembic_config()
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed when the block ends, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in a transaction on a worker thread."""

        def in_thread() -> T:
            with self.session() as session:
                return work(session)

        return await anyio.to_thread.run_sync(in_thread)

    def dispose(self) -> None:
        self.engine.dispose()
