"""``Idempotency-Key`` for every write.

The remembered response is written in the same transaction as the change it describes, so a key
is never recorded for a change that did not commit, nor a change committed without its key. Two
requests racing with one key: the second blocks on the key's primary key (PostgreSQL) or on the
write lock (SQLite), then finds the first one's record and replays it. Only successful responses
are remembered; a request that failed wrote nothing and may be retried with the same key.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, StringConstraints
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import SettingsDep
from app.core.db import WriteSessionDep
from app.core.errors import InvalidInput
from app.core.security import Principal, PrincipalDep
from app.core.types import utcnow
from app.models import IdempotencyRecord

REPLAY_HEADER = "Idempotent-Replayed"

KEY_PATTERN = r"^[\x21-\x7e]+$"  # printable ASCII, no space
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=KEY_PATTERN)
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=KEY_PATTERN,
        description="Any unique string (a UUID is ideal). A retry with the same key and body "
        "returns the first response and writes nothing; the same key with another body is a 422.",
    ),
]

Work = Callable[[], Awaitable[tuple[int, BaseModel]]]


def fingerprint(request: Request, payload: BaseModel | None) -> str:
    body = payload.model_dump(mode="json") if payload is not None else None
    canonical = json.dumps(
        [request.method, request.url.path, body], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotentWrite:
    """The one way a route commits a write: ``await writes.run(payload, work)``."""

    def __init__(
        self,
        session: AsyncSession,
        request: Request,
        principal: Principal,
        key: str | None,
        retention: timedelta,
    ) -> None:
        self.session = session
        self.request = request
        self.principal = principal
        self.key = key
        self.retention = retention

    async def run(self, payload: BaseModel | None, work: Work) -> Response:
        """Run ``work`` in one transaction and commit it; replay instead if the key was seen."""
        session, key = self.session, self.key
        scope = self.principal.idempotency_scope
        print_ = fingerprint(self.request, payload)
        try:
            async with session.begin():
                if key is not None:
                    await _serialise_on_key(session, scope, key)
                    record = await session.get(IdempotencyRecord, (scope, key))
                    if record is not None and record.created_at > utcnow() - self.retention:
                        return replay(record, print_)
                    if record is not None:  # expired: forget it, the key is free again
                        await session.delete(record)
                        await session.flush()
                status, result = await work()
                body = result.model_dump_json()
                if key is not None:
                    session.add(
                        IdempotencyRecord(
                            principal=scope,
                            key=key,
                            fingerprint=print_,
                            status_code=status,
                            response_body=body,
                        )
                    )
        except IntegrityError:
            if key is None:
                raise
            async with session.begin():
                record = await session.get(IdempotencyRecord, (scope, key))
            if record is None:
                raise
            return replay(record, print_)
        return json_response(status, body)


async def _serialise_on_key(session: AsyncSession, scope: str, key: str) -> None:
    """Make concurrent retries with one key wait for each other, so the later ones replay the
    first one's response instead of running the work again on the state it left behind.

    SQLite needs nothing: a write transaction there already holds the database's write lock.
    """
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.exec(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"{scope}\x1f{key}", 0)))
        )


async def get_idempotent_write(
    request: Request,
    session: WriteSessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> IdempotentWrite:
    retention = timedelta(hours=settings.idempotency_retention_hours)
    return IdempotentWrite(session, request, principal, idempotency_key, retention)


WritesDep = Annotated[IdempotentWrite, Depends(get_idempotent_write)]


def replay(record: IdempotencyRecord, print_: str) -> Response:
    if record.fingerprint != print_:
        raise InvalidInput(
            "this Idempotency-Key was already used with a different request; "
            "use a new key for a new request"
        )
    response = json_response(record.status_code, record.response_body)
    response.headers[REPLAY_HEADER] = "true"
    return response


def json_response(status: int, body: str) -> Response:
    return Response(content=body, status_code=status, media_type="application/json")


async def purge_expired(session: AsyncSession, retention: timedelta) -> int:
    cutoff = utcnow() - retention
    async with session.begin():
        result: Any = await session.exec(
            delete(IdempotencyRecord).where(col(IdempotencyRecord.created_at) < cutoff)
        )
    return int(result.rowcount or 0)
