"""Consent changes on the driver (asyncpg; sqlite3, with a thread for its commits), bypassing the
ORM: the write half of the hot path. A change is

1. **read**: the credential's key row, the subject and the head of its chain, its current
   consents, the latest guardian, the policy archive's row count, the recipients (only when
   something is withdrawn) and, with an ``Idempotency-Key``, the remembered response;
2. **planned** in Python, by the code every ledger write uses (``plan_changes``: the rules and the
   hash chain; ``stop_messages``: the outbox), so nothing here decides anything;
3. **stored**: events, outbox messages, current consents, the idempotency record and the
   subject's new head.

On PostgreSQL, optimistically: the read is one statement and the store is one statement (each its
own transaction, so two round trips in all), and the store writes only if the subject's row is
still the version that was read (``xmin``). Every writer of what a plan rests on (the ledger,
the attributes, guardians, the account's status) writes that row when it takes the subject's
lock (``lock_subject``), so an unchanged row means that nothing the plan rests on has changed.
If it has, the change is read and planned again in a transaction under the subject's row lock,
queued behind the other writers. A response remembered meanwhile under the same
``Idempotency-Key`` breaks the record's primary key, which undoes the whole statement; the change
is then read again and answered from it.

On SQLite, a change is one work given to the writer (``SqliteWriter``), which writes the changes
queued meanwhile in one transaction, each in a savepoint, and commits them together (group
commit). A change takes the database's write lock once the key is found (``begin``), unless
its group already holds it. The reads and the store run on the event loop's thread, the commit
(and the wait for the lock, when a change finds the database busy) on the writer's thread.

The ORM still writes the ledger everywhere else (cancellations, erasure, a child found after the
fact) through ``record_events``, which shares ``chain_events`` and ``stop_messages`` with this.
tests/api/test_writer.py puts other writers between the read and the store.
"""

import json
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import Request, Response
from pydantic import BaseModel
from pydantic_core import to_json

from app.checks.decision import ConsentState, Policies
from app.checks.fast import HotPath, SubjectRow, subject_fields
from app.consents.schemas import ChangeContext, ConsentPublic
from app.consents.service import Change, Planned, check_changes, plan_changes
from app.core.config import Settings
from app.core.db import Database
from app.core.driver import (
    WAIT_SECONDS,
    KeyRow,
    Row,
    acquire,
    as_uuid,
    begin,
    instant,
    key_row,
    row_of,
    sqlite_insert,
    sqlite_value,
    when,
)
from app.core.errors import DatabaseUnavailable
from app.core.idempotency import fingerprint, json_response, replay
from app.core.security import Credential, Scope, authorize
from app.core.types import utcnow
from app.models import IdempotencyRecord, Subject
from app.policies.service import POLICY_ROWS, policies_from_rows
from app.webhooks.outbox import STOP_TYPES, stop_messages


@dataclass(frozen=True, slots=True)
class LedgerSubject(SubjectRow):
    """What the check reads of a subject, and the head of its chain."""

    last_seq: int
    head_hash: str
    last_event_at: datetime | None
    version: int | None  # PostgreSQL: the row's xmin, None for a subject not yet stored


@dataclass(frozen=True, slots=True)
class RecipientRow:
    id: uuid.UUID
    targets: list[str] | None
    purposes: list[str] | None


@dataclass(slots=True)
class Facts:
    """What step 1 read."""

    key: KeyRow | None
    subject: LedgerSubject
    guardian_ref: str | None
    current: dict[tuple[str, str], ConsentState]
    policies: Policies
    recipients: list[RecipientRow]
    remembered: IdempotencyRecord | None


@dataclass(frozen=True, slots=True)
class Stored:
    """What step 3 writes."""

    subject: LedgerSubject  # as read
    planned: Planned
    body: str  # the response
    messages: list[Row]
    consents: list[Row]
    record: Row | None  # the idempotency record
    expired: tuple[str, str, datetime] | None  # a remembered response past its retention
    updated_at: datetime


class _Replay(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


# --- the request -------------------------------------------------------------------------------


async def write_changes(
    request: Request,
    credential: Credential,
    subject_id: str,
    changes: Sequence[Change],
    context: ChangeContext,
    idempotency_key: str | None,
    respond: Callable[[list[ConsentPublic]], BaseModel],
) -> Response:
    """Authenticate, check, append and answer, all in one transaction; or replay the answer a
    retry with the same ``Idempotency-Key`` got. ``respond`` shapes the body from the items."""
    state = request.app.state
    hot: HotPath = state.hot_path
    settings: Settings = state.settings
    database: Database = state.database
    print_ = fingerprint(request, context) if idempotency_key is not None else ""
    retention = timedelta(hours=settings.idempotency_retention_hours)
    stops = any(c.state in STOP_TYPES for c in changes)

    def plan(facts: Facts) -> Stored:
        """Step 2: every decision, on what step 1 read; raises to roll back."""
        principal = credential.principal(database, facts.key)
        authorize(principal, Scope.CONSENTS_WRITE, subject_id)
        now = utcnow()
        remembered, expired = facts.remembered, None
        if remembered is not None and idempotency_key is not None:
            if remembered.created_at > now - retention:
                raise _Replay(replay(remembered, print_))
            expired = (principal.idempotency_scope, idempotency_key, remembered.created_at)
        check_changes(changes, context)  # in the order of every other route: after the above
        planned = plan_changes(
            principal,
            settings,
            facts.subject,
            facts.guardian_ref,
            facts.current,
            facts.policies,
            changes,
            context,
        )
        body = respond(planned.items).model_dump_json()
        record = None
        if idempotency_key is not None:
            record = {
                "principal": principal.idempotency_scope,
                "key": idempotency_key,
                "fingerprint": print_,
                "status_code": 200,
                "response_body": body,
                "created_at": now,
            }
        return Stored(
            subject=facts.subject,
            planned=planned,
            body=body,
            messages=stop_messages(planned.events, facts.recipients),
            consents=[
                {
                    "subject_id": e.subject_id,
                    "target_key": e.target_key,
                    "purpose_key": e.purpose_key,
                    "state": e.state,
                    "policy_version": e.policy_version,
                    "event_id": e.id,
                    "recorded_at": e.recorded_at,
                    "expires_at": e.expires_at,
                }
                for e in planned.events
            ],
            record=record,
            expired=expired,
            updated_at=now,
        )

    writer = _Postgres if hot.dialect == "postgresql" else _Sqlite
    try:
        stored = await writer(hot, credential, subject_id, idempotency_key, stops).run(plan)
    except _Replay as done:
        return done.response
    return json_response(200, stored.body)


class _Writer(ABC):
    def __init__(
        self,
        hot: HotPath,
        credential: Credential,
        subject_id: str,
        idempotency_key: str | None,
        stops: bool,
    ) -> None:
        self.hot = hot
        self.credential = credential
        self.subject_id = subject_id
        self.idempotency_key = idempotency_key
        self.stops = stops

    def new_subject(self) -> Subject:
        now = utcnow()
        return Subject(id=self.subject_id, created_at=now, updated_at=now)

    def facts(
        self,
        key: Sequence[Any] | None,
        subject: Sequence[Any] | None,
        guardian: str | None,
        consents: Sequence[Sequence[Any]],
        policies: Policies,
        recipients: Sequence[Sequence[Any]],
        remembered: Sequence[Any] | None,
    ) -> Facts:
        if subject is None:  # not stored yet: as it will be created
            new = self.new_subject()
            subject = (
                new.status, new.jurisdiction, None, None, None, None, None, None,
                new.last_seq, new.head_hash, None, None,
            )  # fmt: skip
        return Facts(
            key=key_row(key) if key is not None else None,
            subject=LedgerSubject(
                self.subject_id,
                **subject_fields(subject),
                last_seq=subject[8],
                head_hash=subject[9],
                last_event_at=instant(subject[10]),
                version=subject[11] if len(subject) > 11 else None,
            ),
            guardian_ref=guardian,
            current={
                (c[0], c[1]): ConsentState(c[2], as_uuid(c[3]), c[4], when(c[5]), instant(c[6]))
                for c in consents
            },
            policies=policies,
            recipients=[
                RecipientRow(as_uuid(r[0]), _json_list(r[1]), _json_list(r[2])) for r in recipients
            ],
            remembered=IdempotencyRecord(
                principal="",
                key="",
                fingerprint=remembered[0],
                status_code=remembered[1],
                response_body=remembered[2],
                created_at=when(remembered[3]),
            )
            if remembered is not None
            else None,
        )

    @abstractmethod
    async def run(self, plan: Callable[[Facts], Stored]) -> Stored:
        """Read, ``plan``, store, in one transaction; what ``plan`` raises rolls it back."""


def _json_list(value: str | None) -> list[str] | None:
    loaded = json.loads(value) if value is not None else None
    return list(loaded) if loaded is not None else None


# --- PostgreSQL --------------------------------------------------------------------------------
#
# Optimistic: one statement reads, one statement writes, each its own transaction, and the write
# happens only if the subject's row is still the version that was read (its ``xmin``, the
# transaction that wrote it). Everything a change depends on moves that row: every ledger append
# sets its head, and every other writer to a subject takes its lock by writing it
# (``lock_subject``). Otherwise nothing is written, and the change is read and planned again.

ATTEMPTS = 3  # under the lock; only a response remembered meanwhile makes one fail

_PG_READ_SUBJECT = """
SELECT
  (SELECT ROW(k.id, k.name, k.role, k.revoked_at, k.last_used_at)
     FROM api_key k WHERE k.{column} = $2),
  (SELECT ROW(s.status, s.jurisdiction, s.birth_year, s.birth_date, s.age, s.age_stated_at,
              s.guardian_verified_at, s.child_until, s.last_seq, s.head_hash, s.last_event_at,
              s.xmin::text::bigint)
     FROM subject s WHERE s.id = $1),
  (SELECT g.guardian_ref FROM guardian_consent g WHERE g.subject_id = $1
    ORDER BY g.recorded_at DESC LIMIT 1),
  ARRAY(SELECT ROW(c.target_key, c.purpose_key, c.state, c.event_id, c.policy_version,
                   c.recorded_at, c.expires_at)
          FROM consent c WHERE c.subject_id = $1),
  (SELECT count(*) FROM policy_version),
  CASE WHEN $3 THEN ARRAY(SELECT ROW(r.id, r.targets::text, r.purposes::text)
                            FROM recipient r ORDER BY r.id) END,
  """
# The response remembered under the request's Idempotency-Key ($4), if it has one. A request
# without a key runs the statement without this lookup: not only is it wasted work, but a
# prepared statement's plan is kept for the connection's life, and a plan made while the table
# was empty scans all of it; as keyed requests fill it, every request would pay for that scan
# until an ANALYZE (autovacuum's, once it runs) makes PostgreSQL plan again.
_PG_REMEMBERED = """(SELECT ROW(i.fingerprint, i.status_code, i.response_body, i.created_at)
     FROM idempotency_record i
    WHERE i.key = $4 AND i.principal = coalesce(
      $5::text, (SELECT k.role || ':' || k.name FROM api_key k WHERE k.{column} = $2)))"""
_PG_READ = {
    (column, keyed): (_PG_READ_SUBJECT + (_PG_REMEMBERED if keyed else "NULL::record")).format(
        column=column
    )
    for column in ("key_hash", "name")
    for keyed in (False, True)
}
# The subject's new head, only if the row is the version read ($5: its xmin) ...
_PG_MOVE_HEAD = """UPDATE subject SET last_seq = $6, head_hash = $7, last_event_at = $8,
    updated_at = $9 WHERE id = $10 AND xmin::text::bigint = $5 RETURNING id"""
# ... or a new subject, only if no other writer created it meanwhile ($5: its row).
_PG_NEW_HEAD = """INSERT INTO subject SELECT * FROM json_populate_recordset(NULL::subject, $5::json)
    ON CONFLICT (id) DO NOTHING RETURNING id"""
# Then everything else, only if the head moved. An Idempotency-Key recorded meanwhile breaks
# its primary key and so undoes the whole statement. The consents' foreign key to their events
# is checked at the statement's end, when the events are in.
_PG_WRITE = """
WITH head AS ({head}), events AS (
  INSERT INTO consent_event
  SELECT r.* FROM json_populate_recordset(NULL::consent_event, $1::json) r
   WHERE EXISTS (SELECT FROM head)
), messages AS (
  INSERT INTO webhook_message
  SELECT r.* FROM json_populate_recordset(NULL::webhook_message, $2::json) r
   WHERE EXISTS (SELECT FROM head)
), consents AS (
  INSERT INTO consent
  SELECT r.* FROM json_populate_recordset(NULL::consent, $3::json) r
   WHERE EXISTS (SELECT FROM head)
  ON CONFLICT (subject_id, target_key, purpose_key) DO UPDATE
  SET state = EXCLUDED.state, policy_version = EXCLUDED.policy_version,
      event_id = EXCLUDED.event_id, recorded_at = EXCLUDED.recorded_at,
      expires_at = EXCLUDED.expires_at
), remembered AS (
  INSERT INTO idempotency_record
  SELECT r.* FROM json_populate_recordset(NULL::idempotency_record, $4::json) r
   WHERE EXISTS (SELECT FROM head)
)
SELECT count(*) FROM head
"""
_PG_MOVE = _PG_WRITE.format(head=_PG_MOVE_HEAD)
_PG_CREATE = _PG_WRITE.format(head=_PG_NEW_HEAD)
# The subject's lock, as ``lock_subject`` takes it: by writing its row (creating it if new).
_PG_LOCK = """INSERT INTO subject SELECT * FROM json_populate_recordset(NULL::subject, $1::json)
    ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at"""
# A remembered response past its retention is forgotten before the key is used again.
_PG_FORGET = """DELETE FROM idempotency_record
 WHERE principal = $1 AND key = $2 AND created_at = $3"""


def _records(rows: Sequence[Row]) -> str:
    """Rows as ``json_populate_recordset`` reads them: one object per row, keyed by column
    (UUIDs as text, instants in ISO 8601 with their offset; pydantic-core writes them)."""
    return to_json(rows).decode()


class _Postgres(_Writer):
    async def run(self, plan: Callable[[Facts], Stored]) -> Stored:
        pool = await self.hot.postgres()
        try:
            async with acquire(pool) as connection:
                try:
                    stored = plan(await self._read(connection))
                    # A response past its retention is forgotten in the same transaction as
                    # the change that replaces it: under the lock, below.
                    if stored.expired is None and await self._write(connection, stored):
                        return stored
                except asyncpg.UniqueViolationError as exc:
                    _raise_unless_remembered(exc)
                # The subject changed since it was read: queue up for its lock, as every other
                # writer to it does, and read and plan again under it.
                for _ in range(ATTEMPTS):
                    try:
                        async with connection.transaction():
                            new = _records([row_of(self.new_subject())])
                            await connection.execute(_PG_LOCK, new, timeout=WAIT_SECONDS)
                            stored = plan(await self._read(connection))
                            if await self._write(connection, stored):
                                return stored
                    except asyncpg.UniqueViolationError as exc:
                        _raise_unless_remembered(exc)
        except _Replay:
            raise
        except Exception as exc:
            raise self.hot.failure(exc) from None
        raise DatabaseUnavailable(
            f"subject {self.subject_id!r} could not be written in {ATTEMPTS} attempts; retry"
        )

    async def _read(self, connection: Any) -> Facts:
        credential = self.credential
        keyed = self.idempotency_key is not None
        key, subject, guardian, consents, count, recipients, remembered = await connection.fetchrow(
            _PG_READ[credential.column, keyed],
            self.subject_id,
            credential.value,
            self.stops,
            *((self.idempotency_key, credential.idempotency_scope(None)) if keyed else ()),
            timeout=WAIT_SECONDS,
        )
        policies = self.hot.cached_policies(count)
        if policies is None:
            rows = await connection.fetch(POLICY_ROWS, timeout=WAIT_SECONDS)
            policies = policies_from_rows(rows)
            self.hot.remember_policies(count, policies)
        return self.facts(key, subject, guardian, consents, policies, recipients or (), remembered)

    async def _write(self, connection: Any, stored: Stored) -> bool:
        """Whether it was written (False: the subject changed since it was read)."""
        if stored.expired is not None:
            await connection.execute(_PG_FORGET, *stored.expired, timeout=WAIT_SECONDS)
        rows = (
            _records([e.row() for e in stored.planned.events]),
            _records(stored.messages),
            _records(stored.consents),
            _records([stored.record] if stored.record else []),
        )
        head = stored.planned.events[-1]
        subject = stored.subject
        if subject.version is None:  # new
            new = self.new_subject()
            new.last_seq, new.head_hash = head.seq, head.hash
            new.last_event_at = new.updated_at = head.recorded_at
            moved = await connection.fetchval(
                _PG_CREATE, *rows, _records([row_of(new)]), timeout=WAIT_SECONDS
            )
        else:
            moved = await connection.fetchval(
                _PG_MOVE,
                *rows,
                subject.version,
                head.seq,
                head.hash,
                head.recorded_at,
                stored.updated_at,
                self.subject_id,
                timeout=WAIT_SECONDS,
            )
        return bool(moved)


def _raise_unless_remembered(exc: asyncpg.UniqueViolationError) -> None:
    """A response remembered under the key meanwhile: read again, and answer from it. Any other
    duplicate is a bug, not a race."""
    if exc.constraint_name != IdempotencyRecord.__table__.primary_key.name:  # type: ignore[attr-defined]
        raise exc


CONSENT_KEY = ("subject_id", "target_key", "purpose_key")

# --- SQLite ------------------------------------------------------------------------------------

_SQLITE_SUBJECT = """SELECT status, jurisdiction, birth_year, birth_date, age, age_stated_at,
  guardian_verified_at, child_until, last_seq, head_hash, last_event_at FROM subject WHERE id = ?"""


class _Sqlite(_Writer):
    async def run(self, plan: Callable[[Facts], Stored]) -> Stored:
        writer = await self.hot.sqlite_writer()

        def work(connection: sqlite3.Connection) -> Stored:
            stored = plan(self._read(connection))
            self._store(connection, stored)
            return stored

        try:
            return await writer.write(work)
        except _Replay:
            raise
        except Exception as exc:
            raise self.hot.failure(exc) from None

    def _read(self, connection: sqlite3.Connection) -> Facts:
        credential, subject_id = self.credential, self.subject_id
        key = connection.execute(
            "SELECT id, name, role, revoked_at, last_used_at FROM api_key "  # noqa: S608
            f"WHERE {credential.column} = ?",  # a column name of ours
            (credential.value,),
        ).fetchone()
        if key is None or key[3] is not None:  # no such key, or revoked: a 401 without the lock
            return self.facts(key, None, None, (), Policies(), (), None)
        begin(connection)  # the database's write lock, held to the group's commit
        subject = connection.execute(_SQLITE_SUBJECT, (subject_id,)).fetchone()
        if subject is None:
            sqlite_insert(connection, "subject", [row_of(self.new_subject())])
            subject = connection.execute(_SQLITE_SUBJECT, (subject_id,)).fetchone()
        guardian = connection.execute(
            "SELECT guardian_ref FROM guardian_consent WHERE subject_id = ? "
            "ORDER BY recorded_at DESC LIMIT 1",
            (subject_id,),
        ).fetchone()
        consents = connection.execute(
            "SELECT target_key, purpose_key, state, event_id, policy_version, recorded_at, "
            "expires_at FROM consent WHERE subject_id = ?",
            (subject_id,),
        ).fetchall()
        [count] = connection.execute("SELECT count(*) FROM policy_version").fetchone()
        policies = self.hot.cached_policies(count)
        if policies is None:
            policies = policies_from_rows(connection.execute(POLICY_ROWS).fetchall())
            self.hot.remember_policies(count, policies)
        recipients = []
        if self.stops:
            recipients = connection.execute(
                "SELECT id, targets, purposes FROM recipient ORDER BY id"
            ).fetchall()
        scope = self.credential.idempotency_scope(key_row(key) if key is not None else None)
        remembered = None
        if self.idempotency_key is not None and scope is not None:
            remembered = connection.execute(
                "SELECT fingerprint, status_code, response_body, created_at "
                "FROM idempotency_record WHERE principal = ? AND key = ?",
                (scope, self.idempotency_key),
            ).fetchone()
        return self.facts(
            key, subject, guardian[0] if guardian else None, consents, policies, recipients,
            remembered,
        )  # fmt: skip

    def _store(self, connection: sqlite3.Connection, stored: Stored) -> None:
        head = stored.planned.events[-1]
        sqlite_insert(connection, "consent_event", [e.row() for e in stored.planned.events])
        sqlite_insert(connection, "webhook_message", stored.messages)
        sqlite_insert(connection, "consent", stored.consents, CONSENT_KEY)
        if stored.record is not None:
            sqlite_insert(connection, "idempotency_record", [stored.record], ("principal", "key"))
        connection.execute(
            "UPDATE subject SET last_seq = ?, head_hash = ?, last_event_at = ?, updated_at = ? "
            "WHERE id = ?",
            (
                head.seq,
                head.hash,
                sqlite_value(head.recorded_at),
                sqlite_value(stored.updated_at),
                self.subject_id,
            ),
        )
