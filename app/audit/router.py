import uuid
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.audit import checkpoints, service
from app.audit.export import MEDIA_TYPES, stream_export
from app.audit.filters import EventFilterDep
from app.audit.schemas import (
    CheckpointList,
    CheckpointPublic,
    LawfulSubject,
    PublicKey,
    Stats,
    VerifyReport,
)
from app.audit.verify import verify
from app.catalogue.router import CatalogueDep
from app.catalogue.service import resolve_pair
from app.consents.schemas import EventPublic
from app.core.config import SettingsDep
from app.core.db import DatabaseDep, ReadSessionDep
from app.core.errors import InvalidInput, NotFound, problem_responses
from app.core.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    clamp_limit,
    cursor_instant,
    decode_cursor,
    encode_cursor,
)
from app.core.schemas import InputInstant
from app.core.security import Principal, Scope, requires
from app.core.types import utcnow
from app.models import Checkpoint

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class CheckpointNotFound(NotFound):
    slug = "checkpoint-not-found"
    title = "Checkpoint not found"


ReadAudit = Annotated[Principal, requires(Scope.AUDIT_READ)]
KeyQuery = Annotated[str, Query(min_length=1, max_length=64)]


def checkpoint_public(checkpoint: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic.model_validate(
        {**checkpoint.model_dump(), "signed_message": checkpoints.signed_message(checkpoint)}
    )


@router.get(
    "/events",
    operation_id="audit-events",
    response_model=Page[EventPublic],
    responses=problem_responses(InvalidInput),
)
async def audit_events(
    filters: EventFilterDep,
    session: ReadSessionDep,
    _principal: ReadAudit,
    order: Literal["oldest", "newest"] = "oldest",
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> Page[EventPublic]:
    """Every subject's events, filtered, oldest or newest first; follow `next_cursor`."""
    async with session.begin():
        return await service.list_events(session, filters, order=order, limit=limit, cursor=cursor)


@router.get(
    "/consents",
    operation_id="audit-lawful-subjects",
    response_model=Page[LawfulSubject],
    responses=problem_responses(InvalidInput),
)
async def lawful_subjects(
    as_of: Annotated[InputInstant, Query(description="The instant in question.")],
    target: KeyQuery,
    purpose: KeyQuery,
    catalogue: CatalogueDep,
    settings: SettingsDep,
    session: ReadSessionDep,
    _principal: ReadAudit,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> Page[LawfulSubject]:
    """Every subject whose consent allowed (target, purpose) at `as_of`: who could lawfully be
    processed for it then, each with the consent event that made it so."""
    pair = resolve_pair(catalogue, target, purpose, ("query",))
    async with session.begin():
        return await service.lawful_subjects(
            session, settings, pair, as_of, limit=limit, cursor=cursor
        )


@router.get(
    "/export",
    operation_id="audit-export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}, "text/csv": {}},
            "description": "The events, one per line, from one consistent snapshot.",
        },
        **problem_responses(InvalidInput),
    },
)
async def export(
    filters: EventFilterDep,
    database: DatabaseDep,
    _principal: ReadAudit,
    format: Literal["ndjson", "csv"] = "ndjson",
) -> StreamingResponse:
    """The ledger (with the same filters as `/v1/audit/events`), streamed as it is read from one
    consistent snapshot, ordered by subject and sequence: NDJSON, or CSV with a header row
    (`evidence` as a JSON object)."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        stream_export(database, filters, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="consent-ledger-{stamp}.{format}"'},
    )


@router.get("/verify", operation_id="audit-verify", response_model=VerifyReport)
async def verify_ledger(
    request: Request, database: DatabaseDep, _principal: ReadAudit
) -> VerifyReport:
    """Recompute every subject's hash chain and check the ledger against the latest signed
    checkpoint. `ok` is false if any link is broken or anything the checkpoint saw is gone."""
    report = await verify(database, request.app.state.checkpoint_key.public_key())
    return VerifyReport.model_validate({**asdict(report), "ok": report.ok})


@router.get("/checkpoints", operation_id="audit-checkpoints", response_model=CheckpointList)
async def list_checkpoints(
    session: ReadSessionDep,
    _principal: ReadAudit,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> CheckpointList:
    """Signed checkpoints, newest first. Keep copies outside the system."""
    before = None
    if cursor is not None:
        before = cursor_instant(decode_cursor(cursor, expect={"t": str})["t"])
    size = clamp_limit(limit)
    async with session.begin():
        rows = await checkpoints.list_checkpoints(session, limit=size + 1, before=before)
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = encode_cursor({"t": rows[-1].created_at.isoformat()}) if more else None
    return CheckpointList(items=[checkpoint_public(c) for c in rows], next_cursor=next_cursor)


@router.post(
    "/checkpoints",
    operation_id="audit-create-checkpoint",
    status_code=201,
    response_model=CheckpointPublic,
    responses=problem_responses(
        checkpoints.LedgerNoLongerExtendsCheckpoint, checkpoints.CheckpointInProgress
    ),
)
async def create_checkpoint(
    request: Request,
    database: DatabaseDep,
    _principal: Annotated[Principal, requires(Scope.AUDIT_CHECKPOINT)],
) -> CheckpointPublic:
    """Write a signed checkpoint now (one is also written every hour by itself)."""
    checkpoint = await checkpoints.create_checkpoint(database, request.app.state.checkpoint_key)
    assert checkpoint is not None  # only the periodic job may skip
    return checkpoint_public(checkpoint)


@router.get(
    "/checkpoints/{checkpoint_id}/heads",
    operation_id="audit-checkpoint-heads",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": 'One {"subject_id", "seq", "head_hash"} per line.',
        },
        **problem_responses(CheckpointNotFound),
    },
)
async def checkpoint_heads(
    checkpoint_id: uuid.UUID, database: DatabaseDep, session: ReadSessionDep, _principal: ReadAudit
) -> StreamingResponse:
    """The chain head of every subject as the checkpoint saw it: recompute the signed Merkle
    root from them, then check that the ledger (an export) still holds each one."""
    async with session.begin():
        found = await session.get(Checkpoint, checkpoint_id)
        if found is None or not found.signature:  # not yet signed: not yet a checkpoint
            raise CheckpointNotFound(f"no checkpoint {checkpoint_id}")
    return StreamingResponse(
        checkpoints.stream_heads(database, checkpoint_id), media_type="application/x-ndjson"
    )


@router.get("/public-key", operation_id="audit-public-key", response_model=PublicKey)
async def public_key(request: Request, _principal: ReadAudit) -> PublicKey:
    """The Ed25519 key that verifies checkpoint signatures."""
    key = request.app.state.checkpoint_key
    return PublicKey(
        public_key=checkpoints.public_key_hex(key), pem=checkpoints.public_key_pem(key)
    )


@router.get(
    "/stats",
    operation_id="audit-stats",
    response_model=Stats,
    responses=problem_responses(InvalidInput),
)
async def stats(
    filters: EventFilterDep,
    session: ReadSessionDep,
    _principal: ReadAudit,
    bucket: Literal["day", "week", "month"] = "day",
) -> Stats:
    """Counts per day, week (from Monday) or month, in UTC, of consents given, renewed, refused,
    withdrawn and revoked, with the same filters as `/v1/audit/events`."""
    async with session.begin():
        items = await service.stats(session, filters, bucket)
    return Stats(bucket=bucket, items=items)
