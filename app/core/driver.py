"""The driver-level side of the database, under the ORM: what the hot paths (``app.checks.fast``,
``app.consents.fast``) share. Rows come back as the drivers give them: PostgreSQL's typed values,
or the text SQLAlchemy stores on SQLite (naive UTC instants, UUIDs as 32 hex digits, JSON)."""

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlmodel import SQLModel

from app.core.db import SQLITE_BUSY_TIMEOUT_MS
from app.core.errors import TRANSIENT_SQLSTATES, DatabaseUnavailable

logger = logging.getLogger(__name__)

WAIT_SECONDS = 30  # for a connection, or for the statement: then a 503, as on the ORM's routes
SHUTTING_DOWN = "The service is shutting down; retry shortly."  # a 503's detail, once closed

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


def begin(connection: sqlite3.Connection) -> None:
    """The database's write lock, for a write given to ``SqliteWriter.write``: taken here
    (``BEGIN IMMEDIATE``) unless the group's transaction already holds it."""
    if not connection.in_transaction:
        connection.execute("BEGIN IMMEDIATE")


@dataclass(slots=True)
class _Queued:
    work: Callable[[sqlite3.Connection], Any]
    answer: "asyncio.Future[Any]"
    due: float  # the loop's time after which it is refused unstarted (a 503)


class SqliteWriter:
    """One sqlite3 connection for the driver's write transactions, with group commit.

    ``write(work)`` queues the work; one task writes the queue, the works queued meanwhile in one
    transaction, each in a savepoint of its own (one that raises is rolled back alone and its
    caller gets the exception), and commits them together; each caller is answered once the
    commit is on disk. One transaction per work cost more than the work: the commit waits for
    the disk on another thread, and the lock stayed held until the event loop, busy with checks,
    came back to it, so under load the writes queued behind the lock (BENCHMARKS.md, step 22).

    The works run on the event loop's thread: each reads or writes a few pages in memory, and
    handing each to another thread cost more than running it, as the two threads then pass the
    interpreter back and forth (step 18). They run one after another for at most ``SLICE`` of
    the loop's time before it answers checks again. They never wait there for the database's
    write lock: the busy timeout is zero, and when a work finds the database busy the lock is
    waited for on the writer's own thread (``call``), as every other connection waits for it,
    and the work run again in it. The commit, which waits for the disk, runs there too.

    A work takes the lock itself, with ``begin``, once it has read what it needs to refuse a
    stranger: the lock is the whole database's, and a request with a bad key must not wait for
    it, nor hold it."""

    GROUP = 64  # works in one transaction at most: what was queued when it began
    SLICE = 0.002  # seconds of works run back to back before the loop answers others

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="consent-writer")
        self._queue: deque[_Queued] = deque()
        self._writing: asyncio.Task[None] | None = None
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            # As the ORM's connections (app.core.db): durable commits, foreign keys enforced.
            for pragma in ("synchronous=FULL", "foreign_keys=ON"):
                connection.execute(f"PRAGMA {pragma}")
            self._connection = connection
        return self._connection

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work``'s result once it is committed, or what it raised (and nothing it wrote),
        also answered only after the group's commit: a work's answer may rest on what an earlier
        one of its group wrote. A caller cancelled before its work has started leaves nothing
        written; after, the work is committed with its group."""
        if self._closed:
            raise DatabaseUnavailable(SHUTTING_DOWN)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Queued(work, answer, loop.time() + WAIT_SECONDS))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_all())
        return await answer

    async def _write_all(self) -> None:
        while self._queue:
            group = [self._queue.popleft() for _ in range(min(len(self._queue), self.GROUP))]
            try:
                await self._write_group(group)
            except BaseException as exc:  # cancelled (the loop is closing), or a bug
                for queued in (*group, *self._queue):
                    _answer(queued, exc=_interrupted())
                self._queue.clear()
                if not isinstance(exc, Exception):
                    raise
                logger.exception("the SQLite writer failed")

    async def _write_group(self, group: list[_Queued]) -> None:
        loop = asyncio.get_running_loop()
        if self._open().in_transaction:  # a rollback that failed: start afresh
            self._reset()
        answers: list[tuple[_Queued, Any, BaseException | None]] = []
        begun = 0  # the answers from here on rest on the open transaction (if one is open)
        slice_ends = time.perf_counter() + self.SLICE
        cancelled = False
        for queued in group:
            if queued.answer.done():  # its caller is gone: nothing to write
                continue
            if loop.time() > queued.due:
                _answer(queued, exc=DatabaseUnavailable("The database is busy; retry shortly."))
                continue
            if time.perf_counter() > slice_ends:
                await asyncio.sleep(0)  # let the loop answer checks meanwhile
                slice_ends = time.perf_counter() + self.SLICE
            connection = self._open()
            if not connection.in_transaction:
                begun = len(answers)
            try:
                answers.append((queued, await self._one(connection, queued.work), None))
            except Exception as exc:
                if not self._open_in_transaction(connection):  # undone, with what it rested on
                    answers[begun:] = [(q, None, _interrupted()) for q, _, _ in answers[begun:]]
                answers.append((queued, None, exc))
        if self._open().in_transaction:
            failed, cancelled = await self._commit()
            if failed is not None:  # nothing of the transaction is written
                answers[begun:] = [(q, None, _interrupted(failed)) for q, _, _ in answers[begun:]]
        for queued, result, error in answers:
            _answer(queued, result, error)
        if cancelled:  # after the commit, and its callers told of it
            raise asyncio.CancelledError

    def _open_in_transaction(self, connection: sqlite3.Connection) -> bool:
        """Whether ``connection`` is still the writer's, in the transaction it was in."""
        return self._connection is connection and connection.in_transaction

    async def _one(
        self, connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]
    ) -> T:
        """One work in the group's transaction, in a savepoint; or, if none is open, in the
        transaction it begins (if the database is busy, the lock is waited for on the thread,
        and the work run again in it)."""
        if not connection.in_transaction:
            try:
                return work(connection)
            except sqlite3.OperationalError as exc:
                self._undo(connection)
                if not sqlite_busy(exc):
                    raise
            except BaseException:
                self._undo(connection)
                raise
            try:
                await self.call(_begin_waiting)
            except BaseException:
                if await self._roll_back_after_the_thread():
                    raise asyncio.CancelledError from None
                raise
            connection = self._open()
        connection.execute("SAVEPOINT work")
        try:
            result = work(connection)
            connection.execute("RELEASE work")
        except BaseException:
            try:
                if connection.in_transaction:  # else SQLite has rolled it all back itself
                    connection.execute("ROLLBACK TO work")
                    connection.execute("RELEASE work")
            except sqlite3.Error:  # the savepoint can't be undone alone: undo the transaction
                self._undo(connection)
            raise
        return result

    def _undo(self, connection: sqlite3.Connection) -> None:
        """Roll back the transaction; a connection that can't is closed (which rolls back)."""
        try:
            _rollback_if_open(connection)
        except sqlite3.Error:
            self._reset()

    def _reset(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None

    async def _commit(self) -> tuple[BaseException | None, bool]:
        """Commit on the thread (it waits for the disk): why it failed (and the transaction is
        rolled back), or None; and whether the writer was cancelled meanwhile. The commit is
        seen through to the end even then, so that its callers are told what became of their
        writes."""
        done, cancelled = await self._to_the_end(_commit)
        failed = done.exception()
        if failed is not None:
            logger.error("a group of consent changes could not be committed: %r", failed)
            cancelled |= await self._roll_back_after_the_thread()
        return failed, cancelled

    async def _to_the_end(
        self, work: Callable[[sqlite3.Connection], Any]
    ) -> tuple["asyncio.Future[Any]", bool]:
        """``work`` run on the thread and waited for until it is done, even if cancelled
        meanwhile: its future, and whether the waiting was cancelled (the caller re-raises)."""
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._on_thread, work)
        cancelled = False
        while not done.done():
            with contextlib.suppress(Exception):  # read from the future by the caller
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    cancelled = True
        return done, cancelled

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

    async def _roll_back_after_the_thread(self) -> bool:
        """Roll back what is open once the thread has done what it was handed (a commit or a
        work may be running there; it takes its work in order), and only then return, even if
        cancelled meanwhile: the next group must find the connection idle. Whether it was
        cancelled."""
        _, cancelled = await self._to_the_end(_rollback_if_open)
        return cancelled

    async def close(self) -> None:
        """Refuse new writes, finish the queued ones, and close."""
        self._closed = True
        try:
            if self._writing is not None:
                await asyncio.wait({self._writing})  # a cancel of close() is not the writer's
        finally:
            if self._writing is not None and not self._writing.done():  # close() cancelled
                self._writing.cancel()  # it answers what is queued, after its commit
                await asyncio.wait({self._writing})
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._reset()


def _answer(queued: _Queued, result: Any = None, exc: BaseException | None = None) -> None:
    if queued.answer.done():  # cancelled by its caller
        return
    if exc is not None:
        queued.answer.set_exception(exc)
    else:
        queued.answer.set_result(result)


def _commit(connection: sqlite3.Connection) -> None:
    connection.execute("COMMIT")


def _begin_waiting(connection: sqlite3.Connection) -> None:
    """The write lock, waited for (on the writer's thread, with the busy time-out)."""
    connection.execute("BEGIN IMMEDIATE")


def _interrupted(cause: BaseException | None = None) -> DatabaseUnavailable:
    """For a work undone with its group, through no fault of its own: a 503, to retry."""
    error = DatabaseUnavailable("The change could not be written; retry shortly.")
    error.__cause__ = cause
    return error


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
        return value.astimezone(UTC).isoformat(" ", "microseconds")[:-6]  # less "+00:00"
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
