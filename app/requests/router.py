import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.core.config import SettingsDep
from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import InvalidInput, NotFound, SubjectNotFound, problem_responses
from app.core.idempotency import WritesDep
from app.core.pagination import (
    CursorQuery,
    LimitQuery,
    after_id,
    clamp_limit,
    next_id_cursor,
)
from app.core.schemas import SubjectId, SubjectIdPath
from app.core.security import Principal, Scope, requires
from app.core.types import utcnow
from app.models import DataSubjectRequest
from app.requests import service
from app.requests.deadlines import is_overdue
from app.requests.schemas import (
    CancellationInput,
    Completion,
    Extension,
    IdentityVerification,
    Refusal,
    RequestCreate,
    RequestEventList,
    RequestEventPublic,
    RequestList,
    RequestPublic,
    RequestType,
    Status,
)
from app.requests.service import InvalidTransition, RequestNotFound
from app.subjects.schemas import SubjectExport
from app.subjects.service import get_subject

subject_router = APIRouter(prefix="/v1/subjects/{subject_id}/requests", tags=["requests"])
router = APIRouter(prefix="/v1/requests", tags=["requests"])

CreateRequests = Annotated[Principal, requires(Scope.REQUESTS_CREATE)]
ReadRequests = Annotated[Principal, requires(Scope.REQUESTS_READ)]
ManageRequests = Annotated[Principal, requires(Scope.REQUESTS_MANAGE)]
ACTION_ERRORS = problem_responses(RequestNotFound, InvalidTransition, InvalidInput)


def request_public(request: DataSubjectRequest) -> RequestPublic:
    return RequestPublic.model_validate(
        {
            **request.model_dump(exclude={"export"}),
            "overdue": is_overdue(request, utcnow()),
            "export_attached": request.export is not None,
        }
    )


def _page(rows: list[DataSubjectRequest], size: int) -> RequestList:
    return RequestList(
        items=[request_public(r) for r in rows[:size]], next_cursor=next_id_cursor(rows, size)
    )


@subject_router.post(
    "",
    operation_id="requests-create",
    status_code=201,
    response_model=RequestPublic,
    responses=problem_responses(SubjectNotFound, InvalidInput),
)
async def create_request(
    subject_id: SubjectIdPath,
    payload: RequestCreate,
    settings: SettingsDep,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: CreateRequests,
) -> Response:
    """Open a data-subject request: the subject with its own token, or an officer on their
    behalf. It is due 30 days after receipt (per jurisdiction: see the README), and flagged
    `repeated` when the subject made one of the same type in the past 12 months."""

    async def work() -> tuple[int, RequestPublic]:
        request = await service.create_request(session, settings, principal, subject_id, payload)
        return 201, request_public(request)

    return await writes.run(payload, work)


@subject_router.get(
    "",
    operation_id="requests-list-own",
    response_model=RequestList,
    responses=problem_responses(SubjectNotFound),
)
async def list_subject_requests(
    subject_id: SubjectIdPath,
    session: ReadSessionDep,
    _principal: ReadRequests,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> RequestList:
    """One subject's requests, oldest first (also what its own token can see)."""
    size = clamp_limit(limit)
    async with session.begin():
        await get_subject(session, subject_id)
        rows = await service.list_requests(
            session, subject_id=subject_id, limit=size + 1, after=after_id(cursor)
        )
    return _page(rows, size)


@router.get("", operation_id="requests-list", response_model=RequestList)
async def list_requests(
    session: ReadSessionDep,
    _principal: ReadRequests,
    status: Status | None = None,
    type: Annotated[RequestType | None, Query()] = None,
    overdue: bool | None = Query(default=None, description="Open and past their due time."),
    subject_id: Annotated[SubjectId | None, Query()] = None,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> RequestList:
    """Every request, oldest first, filtered; `?overdue=true` lists the late ones."""
    size = clamp_limit(limit)
    async with session.begin():
        rows = await service.list_requests(
            session,
            subject_id=subject_id,
            status=status,
            type_=type,
            overdue=overdue,
            limit=size + 1,
            after=after_id(cursor),
        )
    return _page(rows, size)


@router.get(
    "/{request_id}",
    operation_id="requests-get",
    response_model=RequestPublic,
    responses=problem_responses(RequestNotFound),
)
async def get_request(
    request_id: uuid.UUID, session: ReadSessionDep, _principal: ReadRequests
) -> RequestPublic:
    async with session.begin():
        return request_public(await service.get_request(session, request_id))


@router.get(
    "/{request_id}/events",
    operation_id="requests-events",
    response_model=RequestEventList,
    responses=problem_responses(RequestNotFound),
)
async def request_events(
    request_id: uuid.UUID, session: ReadSessionDep, _principal: ReadRequests
) -> RequestEventList:
    """Every change of the request: who, when, from which status to which."""
    async with session.begin():
        events = await service.list_events(session, request_id)
    return RequestEventList(
        items=[RequestEventPublic.model_validate(e, from_attributes=True) for e in events]
    )


@router.post(
    "/{request_id}/identity-verification",
    operation_id="requests-verify-identity",
    response_model=RequestPublic,
    responses=ACTION_ERRORS,
)
async def verify_identity(
    request_id: uuid.UUID,
    payload: IdentityVerification,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: ManageRequests,
) -> Response:
    """Record how the subject's identity was verified, and by whom: the first step."""

    async def work() -> tuple[int, RequestPublic]:
        request = await service.verify_identity(session, principal, request_id, payload)
        return 200, request_public(request)

    return await writes.run(payload, work)


@router.post(
    "/{request_id}/start",
    operation_id="requests-start",
    response_model=RequestPublic,
    responses=ACTION_ERRORS,
)
async def start_request(
    request_id: uuid.UUID, session: WriteSessionDep, writes: WritesDep, principal: ManageRequests
) -> Response:
    async def work() -> tuple[int, RequestPublic]:
        return 200, request_public(await service.start(session, principal, request_id))

    return await writes.run(None, work)


@router.post(
    "/{request_id}/completion",
    operation_id="requests-complete",
    response_model=RequestPublic,
    responses=ACTION_ERRORS,
)
async def complete_request(
    request_id: uuid.UUID,
    payload: Completion,
    app_request: Request,
    settings: SettingsDep,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: ManageRequests,
) -> Response:
    """Close the request with what was done (and, for a repeated one, the fee decision).

    Completing an `access` request attaches the subject's export (`GET /v1/requests/{id}/export`);
    a `deletion` request withdraws every consent, erases the subject's attributes and OS
    observations and tells recipients to delete; an `account_cancellation` request does that and
    cancels the account, all in the same transaction."""

    async def work() -> tuple[int, RequestPublic]:
        request = await service.complete(
            session, settings, app_request.app.state.catalogue, principal, request_id, payload
        )
        return 200, request_public(request)

    return await writes.run(payload, work)


@router.post(
    "/{request_id}/refusal",
    operation_id="requests-refuse",
    response_model=RequestPublic,
    responses=ACTION_ERRORS,
)
async def refuse_request(
    request_id: uuid.UUID,
    payload: Refusal,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: ManageRequests,
) -> Response:
    """Refuse, citing one of the policy's eight grounds and a written reason."""

    async def work() -> tuple[int, RequestPublic]:
        return 200, request_public(await service.refuse(session, principal, request_id, payload))

    return await writes.run(payload, work)


@router.post(
    "/{request_id}/extension",
    operation_id="requests-extend",
    response_model=RequestPublic,
    responses=ACTION_ERRORS,
)
async def extend_request(
    request_id: uuid.UUID,
    payload: Extension,
    settings: SettingsDep,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: ManageRequests,
) -> Response:
    """Move the due time once, with a reason, within what the jurisdiction allows."""

    async def work() -> tuple[int, RequestPublic]:
        request = await service.extend(session, settings, principal, request_id, payload)
        return 200, request_public(request)

    return await writes.run(payload, work)


@router.post(
    "/{request_id}/cancellation",
    operation_id="requests-cancel",
    response_model=RequestPublic,
    responses=ACTION_ERRORS,
)
async def cancel_request(
    request_id: uuid.UUID,
    payload: CancellationInput,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: ManageRequests,
) -> Response:
    """Close a request the subject withdrew (or one opened by mistake)."""

    async def work() -> tuple[int, RequestPublic]:
        return 200, request_public(await service.cancel(session, principal, request_id, payload))

    return await writes.run(payload, work)


class NoExport(NotFound):
    slug = "no-export"
    title = "No export attached"


@router.get(
    "/{request_id}/export",
    operation_id="requests-get-export",
    response_model=SubjectExport,
    responses=problem_responses(RequestNotFound, NoExport),
)
async def get_request_export(
    request_id: uuid.UUID, session: ReadSessionDep, _principal: ManageRequests
) -> SubjectExport:
    """The export attached when this access request was completed, for the officer to send: as
    the subject was then (`GET /v1/subjects/{subject_id}/export` shows the present). It is personal
    data, so auditors, who read requests, do not read this; an erasure of the subject removes it."""
    async with session.begin():
        request = await service.get_request(session, request_id)
    if request.export is None:
        raise NoExport(
            f"request {request_id} has no export: only a completed access request has one, "
            "until the subject's data is erased"
        )
    return SubjectExport.model_validate(request.export)
