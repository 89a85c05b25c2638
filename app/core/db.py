"""Engine, sessions and the transaction rules of each database.

Two kinds of session: *read* sessions (checks, listings) and *write* sessions. On SQLite a write
transaction starts with ``BEGIN IMMEDIATE`` so it holds the single write lock from its first
statement (a deferred transaction that reads, then writes, can fail when another writer got
there first); reads use a plain ``BEGIN`` and, under WAL, never wait for writers. On PostgreSQL
both are ordinary READ COMMITTED transactions; writers serialise per subject with a row lock.
"""

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "consent_ledger_write"


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip on every checkout (about half of a short transaction
    # here, see BENCHMARKS.md). A connection the server has dropped fails its first statement
    # instead; SQLAlchemy discards it and that one request gets a 503 with Retry-After.
    return create_async_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 driver so that we emit it ourselves, below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a commit acknowledged is a commit on disk
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    """The engine and the two session factories of one running application."""

    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings)
        self.dialect = self.engine.dialect.name
        self.read_sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False, autoflush=False
        )
        self.write_sessions = async_sessionmaker(
            self.engine.execution_options(**{_WRITE_OPTION: True}),
            class_=AsyncSession,
            expire_on_commit=False,
            autoflush=False,
        )

        self._background: set[asyncio.Task[None]] = set()

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run small bookkeeping writes without making a request wait; finished by dispose()."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settled(self) -> None:
        """Wait for the bookkeeping writes under way (``in_background``) to end."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def dispose(self) -> None:
        await self.settled()
        await self.engine.dispose()


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_read_session(database: DatabaseDep) -> AsyncIterator[AsyncSession]:
    async with database.read_sessions() as session:
        yield session


async def get_write_session(database: DatabaseDep) -> AsyncIterator[AsyncSession]:
    async with database.write_sessions() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
WriteSessionDep = Annotated[AsyncSession, Depends(get_write_session)]


async def upsert(
    session: AsyncSession,
    model: type[SQLModel],
    rows: Sequence[dict[str, Any]],
    index_elements: Sequence[str],
    *,
    update: bool = True,
    update_columns: Sequence[str] | None = None,
) -> None:
    """INSERT ... ON CONFLICT on either database: update the other columns (or only
    ``update_columns``), or do nothing."""
    if not rows:
        return
    table = model.__table__  # type: ignore[attr-defined]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(table).values(list(rows))
    others = list(update_columns or [c for c in rows[0] if c not in index_elements])
    if update and others:
        statement = statement.on_conflict_do_update(
            index_elements=list(index_elements),
            set_={c: statement.excluded[c] for c in others},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(index_elements))
    await session.exec(statement)
