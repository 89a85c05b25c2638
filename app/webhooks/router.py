import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from app.core.config import SettingsDep
from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import InvalidInput, problem_responses
from app.core.idempotency import WritesDep
from app.core.pagination import (
    CursorQuery,
    LimitQuery,
    after_id,
    clamp_limit,
    next_id_cursor,
)
from app.core.schemas import SubjectId
from app.core.security import Principal, Scope, requires
from app.models import Recipient, WebhookMessage
from app.webhooks import service
from app.webhooks.schemas import (
    AttemptList,
    AttemptPublic,
    DeliveryList,
    DeliveryPublic,
    RecipientCreate,
    RecipientCreated,
    RecipientList,
    RecipientPublic,
    RecipientUpdate,
)
from app.webhooks.service import (
    DeliveryNotFound,
    NameTaken,
    NotReplayable,
    RecipientNotFound,
)

router = APIRouter(prefix="/v1/recipients", tags=["recipients"])

ReadRecipients = Annotated[Principal, requires(Scope.RECIPIENTS_READ)]
ManageRecipients = Annotated[Principal, requires(Scope.RECIPIENTS_MANAGE)]


def _public(recipient: Recipient) -> RecipientPublic:
    return RecipientPublic.model_validate(recipient, from_attributes=True)


def _with_secret(recipient: Recipient) -> RecipientCreated:
    return RecipientCreated.model_validate(recipient, from_attributes=True)


def delivery_public(message: WebhookMessage) -> DeliveryPublic:
    return DeliveryPublic.model_validate(
        {
            **message.model_dump(),
            "next_attempt_at": message.next_attempt_at if message.status == "pending" else None,
        }
    )


@router.post(
    "",
    operation_id="recipients-create",
    status_code=201,
    response_model=RecipientCreated,
    responses=problem_responses(InvalidInput, NameTaken),
)
async def create_recipient(
    payload: RecipientCreate,
    request: Request,
    settings: SettingsDep,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: ManageRecipients,
) -> Response:
    """Register a processor or third party. The response holds its signing secret, once;
    from now on each withdrawal or revocation of a pair it relies on, and each erasure of a
    subject it may hold data on, is announced to it by a signed webhook."""

    async def work() -> tuple[int, RecipientCreated]:
        recipient = await service.create_recipient(
            session, settings, request.app.state.catalogue, principal, payload
        )
        return 201, _with_secret(recipient)

    return await writes.run(payload, work)


@router.get("", operation_id="recipients-list", response_model=RecipientList)
async def list_recipients(
    session: ReadSessionDep,
    _principal: ReadRecipients,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> RecipientList:
    size = clamp_limit(limit)
    async with session.begin():
        rows = list(await service.list_recipients(session, limit=size + 1, after=after_id(cursor)))
    return RecipientList(
        items=[_public(r) for r in rows[:size]], next_cursor=next_id_cursor(rows, size)
    )


@router.get(
    "/{recipient_id}",
    operation_id="recipients-get",
    response_model=RecipientPublic,
    responses=problem_responses(RecipientNotFound),
)
async def get_recipient(
    recipient_id: uuid.UUID, session: ReadSessionDep, _principal: ReadRecipients
) -> RecipientPublic:
    async with session.begin():
        return _public(await service.get_recipient(session, recipient_id))


@router.patch(
    "/{recipient_id}",
    operation_id="recipients-update",
    response_model=RecipientPublic,
    responses=problem_responses(RecipientNotFound, InvalidInput),
)
async def update_recipient(
    recipient_id: uuid.UUID,
    payload: RecipientUpdate,
    request: Request,
    settings: SettingsDep,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: ManageRecipients,
) -> Response:
    """Change the URL, kind, or what it relies on (messages already written keep theirs)."""

    async def work() -> tuple[int, RecipientPublic]:
        recipient = await service.update_recipient(
            session, settings, request.app.state.catalogue, recipient_id, payload
        )
        return 200, _public(recipient)

    return await writes.run(payload, work)


@router.post(
    "/{recipient_id}/secret-rotation",
    operation_id="recipients-rotate-secret",
    response_model=RecipientCreated,
    responses=problem_responses(RecipientNotFound),
)
async def rotate_secret(
    recipient_id: uuid.UUID,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: ManageRecipients,
) -> Response:
    """A new signing secret, shown this once; every later attempt is signed with it."""

    async def work() -> tuple[int, RecipientCreated]:
        return 200, _with_secret(await service.rotate_secret(session, recipient_id))

    return await writes.run(None, work)


@router.post(
    "/{recipient_id}/disable",
    operation_id="recipients-disable",
    response_model=RecipientPublic,
    responses=problem_responses(RecipientNotFound),
)
async def disable_recipient(
    recipient_id: uuid.UUID,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: ManageRecipients,
) -> Response:
    """Stop writing messages for it and hold its pending ones. Its history stays."""

    async def work() -> tuple[int, RecipientPublic]:
        return 200, _public(await service.disable_recipient(session, recipient_id))

    return await writes.run(None, work)


@router.post(
    "/{recipient_id}/enable",
    operation_id="recipients-enable",
    response_model=RecipientPublic,
    responses=problem_responses(RecipientNotFound),
)
async def enable_recipient(
    recipient_id: uuid.UUID,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: ManageRecipients,
) -> Response:
    """Deliver again, starting with the messages held while it was disabled."""

    async def work() -> tuple[int, RecipientPublic]:
        return 200, _public(await service.enable_recipient(session, recipient_id))

    return await writes.run(None, work)


@router.get(
    "/{recipient_id}/deliveries",
    operation_id="recipients-list-deliveries",
    response_model=DeliveryList,
    responses=problem_responses(RecipientNotFound),
)
async def list_deliveries(
    recipient_id: uuid.UUID,
    session: ReadSessionDep,
    _principal: ReadRecipients,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    subject_id: Annotated[SubjectId | None, Query()] = None,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> DeliveryList:
    """Messages to this recipient, oldest first, with their status."""
    size = clamp_limit(limit)
    async with session.begin():
        rows = list(
            await service.list_deliveries(
                session,
                recipient_id,
                status=status,
                subject_id=subject_id,
                limit=size + 1,
                after=after_id(cursor),
            )
        )
    return DeliveryList(
        items=[delivery_public(m) for m in rows[:size]], next_cursor=next_id_cursor(rows, size)
    )


@router.get(
    "/{recipient_id}/attempts",
    operation_id="recipients-list-attempts",
    response_model=AttemptList,
    responses=problem_responses(RecipientNotFound),
)
async def list_attempts(
    recipient_id: uuid.UUID,
    session: ReadSessionDep,
    _principal: ReadRecipients,
    message_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> AttemptList:
    """Every delivery attempt to this recipient, oldest first: when, how long, what it said."""
    size = clamp_limit(limit)
    async with session.begin():
        rows = list(
            await service.list_attempts(
                session, recipient_id, message_id=message_id, limit=size + 1, after=after_id(cursor)
            )
        )
    return AttemptList(
        items=[AttemptPublic.model_validate(a, from_attributes=True) for a in rows[:size]],
        next_cursor=next_id_cursor(rows, size),
    )


@router.post(
    "/{recipient_id}/deliveries/{message_id}/replay",
    operation_id="recipients-replay-delivery",
    response_model=DeliveryPublic,
    responses=problem_responses(RecipientNotFound, DeliveryNotFound, NotReplayable),
)
async def replay_delivery(
    recipient_id: uuid.UUID,
    message_id: uuid.UUID,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: ManageRecipients,
) -> Response:
    """Queue a failed (or delivered) message again, now, with a fresh retry window. It keeps
    its webhook-id, so a receiver that has it already can tell."""

    async def work() -> tuple[int, DeliveryPublic]:
        return 200, delivery_public(await service.replay(session, recipient_id, message_id))

    return await writes.run(None, work)
