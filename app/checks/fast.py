"""The check's hot path: the credential, the subject, its consents for the pairs asked (and the OS
state, when a device is named) and the policy archive's version, read by ONE statement on the
driver (asyncpg; or sqlite3 on the event loop's thread, through aiosqlite when the database is
busy), bypassing the ORM.

One statement is one snapshot, so the answer is as fresh as the database: a withdrawal or a
revocation of the key committed before the check began is always seen, on every worker. Nothing
here is cached but the published policy versions, and those are checked on every call against
the archive's row count (versions are only ever added), so a new material version is seen at once.

Everything else (errors, scopes, the decision itself) is the same code the rest of the service
uses; tests/api/test_hotpath.py holds this module to the ORM path on both databases.
"""

import asyncio
import contextlib
import functools
import json
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from app.checks.decision import ConsentState, OsState, Policies
from app.core.config import Settings
from app.core.db import SQLITE_BUSY_TIMEOUT_MS, Database
from app.core.driver import (
    SHUTTING_DOWN,
    WAIT_SECONDS,
    KeyRow,
    SqliteWriter,
    acquire,
    as_uuid,
    day,
    instant,
    key_row,
    sqlite_busy,
    take,
    unavailable,
    when,
)
from app.core.errors import DatabaseUnavailable
from app.policies.service import load_policies

logger = logging.getLogger(__name__)

# After a failure to open the connections, no new attempt for as long as clients are told to wait.
RETRY_SECONDS = float(DatabaseUnavailable.headers["Retry-After"])

PG_LOOKUP = """
SELECT
  (SELECT ROW(k.id, k.name, k.role, k.revoked_at, k.last_used_at)
     FROM api_key k WHERE k.key_hash = $1),
  (SELECT ROW(s.status, s.jurisdiction, s.birth_year, s.birth_date, s.age, s.age_stated_at,
              s.guardian_verified_at, s.child_until)
     FROM subject s WHERE s.id = $2),
  ARRAY(SELECT ROW(c.target_key, c.purpose_key, c.state, c.event_id, c.policy_version,
                   c.recorded_at, c.expires_at)
          FROM consent c
         WHERE c.subject_id = $2 AND c.target_key = ANY($3::text[])
           AND c.purpose_key = ANY($4::text[])),
  ARRAY(SELECT ROW(o.target_key, o.state, o.last_denied_at)
          FROM permission_observation o
         WHERE o.subject_id = $2 AND o.device_id = $5 AND o.target_key = ANY($3::text[])),
  (SELECT count(*) FROM policy_version)
"""

_SQLITE_LOOKUP = """
SELECT
  (SELECT json_array(k.id, k.name, k.role, k.revoked_at, k.last_used_at)
     FROM api_key k WHERE k.key_hash = ?1),
  (SELECT json_array(s.status, s.jurisdiction, s.birth_year, s.birth_date, s.age,
                     s.age_stated_at, s.guardian_verified_at, s.child_until)
     FROM subject s WHERE s.id = ?2),
  (SELECT json_group_array(json_array(c.target_key, c.purpose_key, c.state, c.event_id,
                                      c.policy_version, c.recorded_at, c.expires_at))
     FROM consent c
    WHERE c.subject_id = ?2 AND {ranged}c.target_key {targets}
      AND {ranged}c.purpose_key {purposes}),
  {observations},
  (SELECT count(*) FROM policy_version)
"""
_SQLITE_OBSERVATIONS = """(
  SELECT json_group_array(json_array(o.target_key, o.state, o.last_denied_at))
    FROM permission_observation o
   WHERE o.subject_id = ?2 AND o.device_id = ?3 AND o.target_key {targets})"""


# Above this many (target, purpose) probes of the consent table's key, a batch reads the subject's
# consents as one range of it instead (BENCHMARKS.md, step 29).
RANGE_ABOVE = 24


@functools.lru_cache(maxsize=256)
def sqlite_lookup(targets: int, purposes: int, *, device: bool) -> str:
    """The lookup for that many targets and purposes, bound as plain values after the key's
    hash, the subject and the device (?1, ?2, ?3): a pair as ``= ?4``, not as JSON arrays read
    through ``json_each``, which cost a single check twice the statement's time (BENCHMARKS.md).
    Each shape (its counts, with a device or without) is one text, kept prepared in each
    connection's cache (sqlite3's, 128 texts: the shapes the app's checks use, typically a few).

    SQLite probes the consents' primary key (subject, target, purpose) once for every target
    with every purpose the lists hold: 72 probes for a batch of 20 pairs over 12 targets and 6
    purposes. Beyond RANGE_ABOVE probes, a unary ``+`` keeps it from probing by target and
    purpose: it reads the subject's consents as one range of that key and filters them by the
    lists, which costs less even for a subject with a consent to every pair of the catalogue.

    Without a ``device``, no OS state is read: the statement has no subquery of the
    observations (its column is NULL), which probed their key once for every target (step 32)."""

    def values(first: int, count: int) -> str:
        if count == 1:
            return f"= ?{first}"
        return "IN (" + ", ".join(f"?{first + i}" for i in range(count)) + ")"

    ranged = "+" if targets * purposes > RANGE_ABOVE else ""
    in_targets = values(4, targets)
    observations = _SQLITE_OBSERVATIONS.format(targets=in_targets) if device else "NULL"
    return _SQLITE_LOOKUP.format(
        ranged=ranged,
        targets=in_targets,
        purposes=values(4 + targets, purposes),
        observations=observations,
    )


@dataclass(frozen=True, slots=True)
class SubjectRow:
    """The subject's attributes the decision reads (what ``app.subjects.age`` needs, too)."""

    id: str
    status: str
    jurisdiction: str
    birth_year: int | None
    birth_date: date | None
    age: int | None
    age_stated_at: datetime | None
    guardian_verified_at: datetime | None
    child_until: date | None


@dataclass(frozen=True, slots=True)
class Lookup:
    key: KeyRow | None
    subject: SubjectRow | None
    consents: dict[tuple[str, str], ConsentState]
    os: dict[str, OsState]
    policies: Policies


def subject_fields(row: Sequence[Any]) -> dict[str, Any]:
    """SubjectRow's fields but the id, from a statement's row (its first eight columns)."""
    return {
        "status": row[0],
        "jurisdiction": row[1],
        "birth_year": row[2],
        "birth_date": day(row[3]),
        "age": row[4],
        "age_stated_at": instant(row[5]),
        "guardian_verified_at": instant(row[6]),
        "child_until": day(row[7]),
    }


def _subject(subject_id: str, row: Sequence[Any]) -> SubjectRow:
    return SubjectRow(subject_id, **subject_fields(row))


class HotPath:
    """One per application process: the driver-level connections and the cached policy versions.

    On PostgreSQL the checks and the consent changes (app.consents.fast) share one pool. A pool
    of their own for the changes, so that no check waits for a connection a change holds through
    its commit or a lock, was measured and not kept: no better tail with writes mixed in, twice
    the connections (BENCHMARKS.md, step 24).
    """

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self._pool: Any = None  # asyncpg.Pool
        self._direct: sqlite3.Connection | None = None  # reads on the event loop's thread
        self._sqlite: asyncio.Queue[Any] | None = None  # idle aiosqlite connections
        self._sqlite_all: list[Any] = []
        self._writer: SqliteWriter | None = None  # consent changes' connection
        self._policies: tuple[int, Policies] | None = None
        self._starting = asyncio.Lock()
        self._reloading = asyncio.Lock()
        self._started = False
        self._closed = False
        self._retry_at = 0.0  # time.monotonic()'s: no new attempt to open before it
        self._failure = ""

    async def _start(self) -> None:
        """On first use, so a database that is down at start-up costs checks, not the start.

        After a failure to open, the requests of the next RETRY_SECONDS (what Retry-After tells
        clients) get the same 503 without trying again: the requests queued here meanwhile
        would otherwise each try in turn, one after another, against a server that is down or
        out of connections."""
        await take(self._starting)  # rare and short, but never longer than other waits
        try:
            if self._started:
                return
            if self._closed:
                raise DatabaseUnavailable(SHUTTING_DOWN)
            if time.monotonic() < self._retry_at:
                raise DatabaseUnavailable(self._failure)
            try:
                await self._open()
            except Exception as exc:
                logger.warning("could not open the database connections: %r", exc)
                failure = unavailable(exc)
                if isinstance(failure, DatabaseUnavailable):
                    self._retry_at = time.monotonic() + RETRY_SECONDS
                    self._failure = str(failure)
                raise failure from None
            if self._closed:  # closed while it opened: nothing may be left open
                try:
                    await self.close()
                except Exception:
                    logger.exception("closing the connections opened during shutdown failed")
                raise DatabaseUnavailable(SHUTTING_DOWN)
            self._started = True
        finally:
            self._starting.release()

    async def _open(self) -> None:
        url = self.database.engine.url
        size = self.settings.database_pool_size
        if self.database.dialect == "postgresql":
            # The connection arguments the ORM's engine uses (host, TLS, …), as asyncpg names them.
            _args, options = self.database.engine.dialect.create_connect_args(url)
            cache = options.pop("prepared_statement_cache_size", None)
            if cache is not None:
                options["statement_cache_size"] = cache
            options.pop("async_creator_fn", None)
            options.setdefault("timeout", WAIT_SECONDS)  # to connect (asyncpg's default: 60 s)

            async def keep(connection: Any) -> None:
                """Only single statements and whole transactions run here: nothing to reset
                between uses, so no round trip for it either, unless a cancelled request left
                a transaction open."""
                if connection.is_in_transaction():
                    await connection.execute("ROLLBACK")

            # One connection at first (asyncpg 0.32 keeps it, and opens it again in the background
            # if it drops), up to ``size`` under load; those beyond the first are closed after five
            # idle minutes (asyncpg's default), but none for the number of queries it has run
            # (asyncpg's default: after 50,000). Opening one costs ~4 ms, and its first lookup
            # ~7 ms more while asyncpg reads the row types, right when requests queue for it
            # (BENCHMARKS.md, step 24).
            self._pool = await asyncpg.create_pool(
                min_size=1, max_size=size, max_queries=math.inf, reset=keep, **options
            )
        else:
            import aiosqlite

            async with contextlib.AsyncExitStack() as opened:  # on a failure, closed again
                writer = SqliteWriter(url.database or "")
                opened.push_async_callback(writer.close)
                idle: asyncio.Queue[Any] = asyncio.Queue()
                threaded = []
                # Each is a thread. They take only the lookups that found the database busy
                # (below); when they took every lookup, four were slower than two (BENCHMARKS.md).
                for _ in range(min(size, 2)):
                    connection = await aiosqlite.connect(url.database or "", isolation_level=None)
                    opened.push_async_callback(connection.close)
                    await connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                    threaded.append(connection)
                    idle.put_nowait(connection)
                # The lookup is one indexed read of a few pages: on the event loop's own thread
                # it costs half of what handing it to a connection's thread and back does
                # (BENCHMARKS.md). It never waits there for a lock: SQLite's busy timeout is
                # zero on it, and a lookup that finds the database busy (under WAL, rare: a
                # recovery, an exclusive lock) is run again on a threaded connection, which
                # waits as every other does. (A page not in memory is still read from disk on
                # this thread.) Only the event loop's thread uses it.
                direct = sqlite3.connect(
                    url.database or "", timeout=0, isolation_level=None, check_same_thread=False
                )
                opened.callback(direct.close)
                direct.execute("PRAGMA query_only=1")
                opened.pop_all()
            self._writer, self._sqlite, self._sqlite_all = writer, idle, threaded
            self._direct = direct

    def failure(self, exc: Exception) -> Exception:
        """What a statement that failed answers: as ``driver.unavailable`` says, but a 503 once
        closed (a pool being closed refuses the requests still waiting for a connection)."""
        return DatabaseUnavailable(SHUTTING_DOWN) if self._closed else unavailable(exc)

    @property
    def dialect(self) -> str:
        return self.database.dialect

    async def postgres(self) -> Any:
        """The asyncpg pool."""
        if not self._started:
            await self._start()
        return self._pool

    async def sqlite_writer(self) -> SqliteWriter:
        if not self._started:
            await self._start()
        assert self._writer is not None
        return self._writer

    def cached_policies(self, count: int) -> Policies | None:
        """The published versions, if the archive still holds ``count`` of them."""
        cached = self._policies
        return cached[1] if cached is not None and cached[0] == count else None

    def remember_policies(self, count: int, policies: Policies) -> None:
        """Keep what was read with the archive's row count, unless a newer entry is there."""
        cached = self._policies
        if cached is None or count >= cached[0]:
            self._policies = (count, policies)

    async def close(self) -> None:
        """Everything is closed, even if closing one of them fails (raised once all are done).
        A request after it gets a 503; what a request was still opening is closed by it."""
        self._closed, self._started = True, False
        sqlite, direct, pool, writer = self._sqlite_all, self._direct, self._pool, self._writer
        self._sqlite_all, self._direct, self._pool, self._writer = [], None, None, None
        async with contextlib.AsyncExitStack() as stack:
            for connection in sqlite:
                stack.push_async_callback(connection.close)
            if direct is not None:
                stack.callback(direct.close)
            if pool is not None:
                stack.push_async_callback(pool.close)
            if writer is not None:
                stack.push_async_callback(writer.close)

    @contextlib.asynccontextmanager
    async def _sqlite_connection(self) -> AsyncIterator[Any]:
        assert self._sqlite is not None
        try:
            connection = self._sqlite.get_nowait()
        except asyncio.QueueEmpty:
            connection = await asyncio.wait_for(self._sqlite.get(), WAIT_SECONDS)
        try:
            yield connection
        finally:
            self._sqlite.put_nowait(connection)

    async def lookup(
        self,
        key_hash: str,
        subject_id: str,
        pairs: Sequence[tuple[str, str]],
        device_id: str | None,
    ) -> Lookup:
        targets = sorted({t for t, _ in pairs})
        purposes = sorted({p for _, p in pairs})
        if not self._started:
            await self._start()
        if self._pool is not None:
            try:
                async with acquire(self._pool) as connection:
                    row = await connection.fetchrow(
                        PG_LOOKUP,
                        key_hash,
                        subject_id,
                        targets,
                        purposes,
                        device_id,
                        timeout=WAIT_SECONDS,
                    )
            except Exception as exc:
                raise self.failure(exc) from None
            key, subject, consents, observations, policy_count = row
        else:
            statement = sqlite_lookup(len(targets), len(purposes), device=device_id is not None)
            parameters = (key_hash, subject_id, device_id, *targets, *purposes)
            try:
                raw = self._read_directly(statement, parameters)
                if raw is None:  # busy: wait for it on a connection's thread
                    async with self._sqlite_connection() as connection:
                        # Fetched and closed in one step on the connection's thread: a cancelled
                        # request cannot leave a cursor (and its old snapshot) open on it.
                        [raw] = await connection.execute_fetchall(statement, parameters)
            except Exception as exc:
                raise self.failure(exc) from None
            key = json.loads(raw[0]) if raw[0] else None
            subject = json.loads(raw[1]) if raw[1] else None
            consents = json.loads(raw[2])
            observations = json.loads(raw[3]) if raw[3] is not None else []
            policy_count = raw[4]
        wanted = set(pairs)
        return Lookup(
            key=key_row(key) if key else None,
            subject=_subject(subject_id, subject) if subject else None,
            consents={
                (c[0], c[1]): ConsentState(c[2], as_uuid(c[3]), c[4], when(c[5]), instant(c[6]))
                for c in consents
                if (c[0], c[1]) in wanted
            },
            os={o[0]: OsState(o[1], instant(o[2])) for o in observations} if device_id else {},
            policies=await self._current_policies(policy_count),
        )

    def _read_directly(self, statement: str, parameters: tuple[Any, ...]) -> Any:
        """The lookup's row, read on this thread in a read transaction of its own (fetched to
        the end, so none stays open), or None if the database was busy."""
        assert self._direct is not None
        try:
            [row] = self._direct.execute(statement, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            if sqlite_busy(exc):
                return None
            raise
        return row

    async def _current_policies(self, count: int) -> Policies:
        cached = self.cached_policies(count)
        if cached is not None:
            return cached
        async with self._reloading:  # one reload at a time; the others then find it done
            cached = self.cached_policies(count)
            if cached is not None:
                return cached
            async with self.database.read_sessions() as session, session.begin():
                policies = await load_policies(session)
            # Read after the count, so never older than it; a check that read an older count
            # while this one reloaded does not put an older entry back.
            self.remember_policies(count, policies)
            return policies
