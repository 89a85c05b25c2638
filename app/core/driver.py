"""The driver-level side of the database, under the ORM: what the hot paths (``app.checks.fast``,
``app.consents.fast``) share. Rows come back as the drivers give them: PostgreSQL's typed values,
or the text SQLAlchemy stores on SQLite (naive UTC instants, UUIDs as 32 hex digits, JSON)."""

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlmodel import SQLModel

from app.core.db import SQLITE_BUSY_TIMEOUT_MS
from app.core.errors import TRANSIENT_SQLSTATES, DatabaseUnavailable

WAIT_SECONDS = 30  # for a connection, or for the statement: then a 503, as on the ORM's routes

T = TypeVar("T")
Row = dict[str, Any]  # column: value, as the ORM's model holds it


def acquire(pool: Any) -> Any:
    """``async with acquire(pool) as connection``: an idle one at once, else waiting at most
    WAIT_SECONDS. The time-out is only set when it can matter: asyncio's machinery for it was a
    tenth of a check's time (BENCHMARKS.md)."""
    return pool.acquire() if pool.get_idle_size() else pool.acquire(timeout=WAIT_SECONDS)


async def take(lock: asyncio.Lock) -> None:
    """``lock``, at once if it is free, else waiting at most WAIT_SECONDS (then a 503)."""
    if lock.locked():
        try:
            await asyncio.wait_for(lock.acquire(), WAIT_SECONDS)
        except TimeoutError:
            raise DatabaseUnavailable("The database is busy; retry shortly.") from None
    else:
        await lock.acquire()


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: uuid.UUID
    name: str
    role: str
    revoked_at: datetime | None
    last_used_at: datetime | None


def key_row(row: Sequence[Any]) -> KeyRow:
    return KeyRow(as_uuid(row[0]), row[1], row[2], instant(row[3]), instant(row[4]))


def unavailable(exc: Exception) -> Exception:
    """The database out of reach (refused, dropped, restarting, too many clients, too slow) is a
    503 with Retry-After, as on the ORM's routes; anything else is a bug and stays a 500."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if (
        isinstance(
            exc,
            OSError
            | TimeoutError
            | asyncpg.PostgresConnectionError
            | asyncpg.ConnectionDoesNotExistError
            # What asyncpg raises on a pooled connection the server has just terminated.
            | asyncpg.InternalClientError,
        )
        or sqlstate.startswith(("08", "57P"))
        or sqlstate in TRANSIENT_SQLSTATES
        or (isinstance(exc, sqlite3.OperationalError) and _sqlite_transient(exc))
    ):
        return DatabaseUnavailable("The database could not be reached or is busy; retry shortly.")
    return exc


def _sqlite_transient(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return any(s in text for s in ("locked", "busy", "unable to open", "disk I/O"))


def instant(value: Any) -> datetime | None:
    """PostgreSQL gives aware datetimes; SQLite the text SQLAlchemy stored (naive UTC)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def when(value: Any) -> datetime:
    found = instant(value)
    assert found is not None  # a NOT NULL column
    return found


def day(value: Any) -> date | None:
    return value if value is None or isinstance(value, date) else date.fromisoformat(value)


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


class SqliteWriter:
    """One sqlite3 connection for the driver's write transactions; a transaction holds it from
    BEGIN IMMEDIATE to COMMIT or ROLLBACK (``held``).

    A transaction's statements run on the event loop's thread (``here``): each reads or writes
    a few pages in memory, and handing each to another thread cost more than running it, as
    the two threads then pass the interpreter back and forth (BENCHMARKS.md, step 18). They
    never wait there for the database's write lock: the busy timeout is zero, and work that
    finds the database busy is run again on the writer's own thread (``call``), which waits
    for it as every other connection does. The commit, which waits for the disk, runs there
    too."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="consent-writer")
        self._lock = asyncio.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if self._closed:
            raise DatabaseUnavailable("The service is shutting down; retry shortly.")
        if self._connection is None:
            connection = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            # As the ORM's connections (app.core.db): durable commits, foreign keys enforced.
            for pragma in ("synchronous=FULL", "foreign_keys=ON"):
                connection.execute(f"PRAGMA {pragma}")
            self._connection = connection
        return self._connection

    def here(self, work: Callable[[sqlite3.Connection], T]) -> tuple[T] | None:
        """``(work's result,)`` on this thread, or None, rolled back, if the database was busy."""
        connection = self._open()
        try:
            return (work(connection),)
        except sqlite3.OperationalError as exc:
            if not sqlite_busy(exc):
                raise
        _rollback_if_open(connection)
        return None

    async def call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on the writer's thread, waiting for the database as long as others do."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_thread, work)

    def _on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._open()
        connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        try:
            return work(connection)
        finally:
            connection.execute("PRAGMA busy_timeout=0")

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The connection to oneself for one transaction, which the work begins (``BEGIN
        IMMEDIATE``) and commits; rolled back if anything fails or the request is cancelled."""
        await take(self._lock)
        try:
            yield
        except BaseException:
            await self._roll_back_after_the_thread()
            raise
        finally:
            self._lock.release()

    async def _roll_back_after_the_thread(self) -> None:
        """Roll back what is open once the thread has done what it was handed (a cancelled
        request may have left a commit or a read running there), and only then return, even if
        cancelled again meanwhile: the next transaction must find the connection idle."""
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._on_thread, _rollback_if_open)
        while True:
            try:
                await asyncio.shield(done)  # the thread takes its work in order: this is last
                return
            except asyncio.CancelledError:
                if done.done():  # finished meanwhile: the connection is idle
                    raise
                # else wait on; the caller then re-raises what brought it here

    async def close(self) -> None:
        async with self._lock:  # no transaction under way, and none to come
            self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def sqlite_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock the statement needed (by the primary code of an
    extended one: BUSY_RECOVERY, BUSY_SNAPSHOT, … too)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def _rollback_if_open(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def sqlite_value(value: Any) -> Any:
    """As SQLAlchemy stores it on SQLite: UUIDs as 32 hex digits, instants as naive UTC text,
    JSON as text."""
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def sqlite_insert(
    connection: sqlite3.Connection, table: str, rows: Sequence[Row], upsert: Sequence[str] = ()
) -> None:
    """Insert rows (all with the same columns); with ``upsert`` naming the key, update the other
    columns on a conflict."""
    if not rows:
        return
    columns = list(rows[0])
    marks = ", ".join("?" * len(columns))
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (ours)
    if upsert:
        sql += f" ON CONFLICT ({', '.join(upsert)}) DO UPDATE SET " + ", ".join(
            f"{c} = excluded.{c}" for c in columns if c not in upsert
        )
    connection.executemany(sql, [tuple(sqlite_value(row[c]) for c in columns) for row in rows])


def row_of(model: SQLModel) -> Row:
    """A model's row, column by column, without the ORM."""
    table = type(model).__table__  # type: ignore[attr-defined]
    return {column.name: getattr(model, column.name) for column in table.columns}
