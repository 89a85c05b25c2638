"""Data-subject requests: their lifecycle, deadlines and the log of every change.

    received --identity-verification--> identity_verified --start--> in_progress
    in_progress --completion--> completed
    received | identity_verified | in_progress --refusal--> refused, --cancellation--> cancelled

Extension (once, with a reason, within the jurisdiction's limit) while the request is open.
"""

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.core.config import Settings
from app.core.errors import Conflict, FieldError, InvalidInput, NotFound, SubjectNotFound
from app.core.security import Principal
from app.core.types import utcnow
from app.models import DataSubjectRequest, RequestEvent, Subject
from app.requests.deadlines import OPEN, add_period, extended_due, rule_for
from app.requests.schemas import (
    CancellationInput,
    Completion,
    Extension,
    IdentityVerification,
    Refusal,
    RequestCreate,
)
from app.subjects.erasure import erase_subject
from app.subjects.export import export_subject
from app.subjects.service import lock_subject

REPEAT_WINDOW = timedelta(days=365)


class RequestNotFound(NotFound):
    slug = "request-not-found"
    title = "Request not found"


class InvalidTransition(Conflict):
    slug = "invalid-request-transition"
    title = "Not possible in the request's current status"


async def _log(
    session: AsyncSession,
    request: DataSubjectRequest,
    principal: Principal,
    action: str,
    before: str | None,
    **details: Any,
) -> None:
    session.add(
        RequestEvent(
            request_id=request.id,
            at=utcnow(),
            actor=principal.actor,
            actor_id=principal.name,
            action=action,
            from_status=before,
            to_status=request.status,
            details={k: v for k, v in details.items() if v is not None},
        )
    )
    await session.flush()


async def create_request(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    subject_id: str,
    payload: RequestCreate,
) -> DataSubjectRequest:
    # Locked, so that two requests opened at once cannot both miss the other one.
    locked = select(Subject).where(Subject.id == subject_id).with_for_update()
    subject = (await session.exec(locked)).first()
    if subject is None:
        raise SubjectNotFound(f"no subject {subject_id!r}")
    now = utcnow()
    earlier = await session.exec(
        select(DataSubjectRequest.id).where(
            DataSubjectRequest.subject_id == subject_id,
            DataSubjectRequest.type == payload.type,
            DataSubjectRequest.status != "cancelled",  # one opened by mistake does not count
            col(DataSubjectRequest.received_at) > now - REPEAT_WINDOW,
        )
    )
    due, _ = rule_for(settings, subject.jurisdiction)
    request = DataSubjectRequest(
        subject_id=subject_id,
        type=payload.type,
        status="received",
        received_at=now,
        due_at=add_period(now, due),
        jurisdiction=subject.jurisdiction,
        details=payload.details,
        deletion_circumstance=payload.deletion_circumstance,
        repeated=earlier.first() is not None,
    )
    session.add(request)
    await session.flush()
    await _log(
        session, request, principal, "created", None, type=payload.type, repeated=request.repeated
    )
    return request


async def get_request(
    session: AsyncSession, request_id: uuid.UUID, *, lock: bool = False
) -> DataSubjectRequest:
    statement = select(DataSubjectRequest).where(DataSubjectRequest.id == request_id)
    if lock:
        statement = statement.with_for_update()
    request = (await session.exec(statement)).first()
    if request is None:
        raise RequestNotFound(f"no request {request_id}")
    return request


async def list_requests(
    session: AsyncSession,
    *,
    subject_id: str | None = None,
    status: str | None = None,
    type_: str | None = None,
    overdue: bool | None = None,
    limit: int,
    after: uuid.UUID | None,
) -> list[DataSubjectRequest]:
    """Oldest first (ids are time-ordered), keyset by id."""
    statement = select(DataSubjectRequest).order_by(col(DataSubjectRequest.id)).limit(limit)
    conditions = {
        DataSubjectRequest.subject_id: subject_id,
        DataSubjectRequest.status: status,
        DataSubjectRequest.type: type_,
    }
    for column, value in conditions.items():
        if value is not None:
            statement = statement.where(col(column) == value)
    if after is not None:
        statement = statement.where(col(DataSubjectRequest.id) > after)
    if overdue is not None:
        late = col(DataSubjectRequest.status).in_(OPEN) & (
            col(DataSubjectRequest.due_at) < utcnow()
        )
        statement = statement.where(late if overdue else ~late)
    return list((await session.exec(statement)).all())


async def list_events(session: AsyncSession, request_id: uuid.UUID) -> Sequence[RequestEvent]:
    await get_request(session, request_id)
    statement = select(RequestEvent).where(RequestEvent.request_id == request_id)
    return (await session.exec(statement.order_by(col(RequestEvent.id)))).all()


def _require(request: DataSubjectRequest, allowed: Sequence[str], action: str) -> str:
    if request.status not in allowed:
        raise InvalidTransition(
            f"cannot {action} a request that is {request.status}; "
            f"only one that is {' or '.join(allowed)}"
        )
    return request.status


async def verify_identity(
    session: AsyncSession,
    principal: Principal,
    request_id: uuid.UUID,
    payload: IdentityVerification,
) -> DataSubjectRequest:
    request = await get_request(session, request_id, lock=True)
    before = _require(request, ("received",), "verify the identity of")
    request.status = "identity_verified"
    request.identity_method, request.identity_verified_by = payload.method, payload.verified_by
    request.identity_verified_at = utcnow()
    await _log(
        session, request, principal, "identity_verified", before,
        method=payload.method, verified_by=payload.verified_by,
    )  # fmt: skip
    return request


async def start(
    session: AsyncSession, principal: Principal, request_id: uuid.UUID
) -> DataSubjectRequest:
    request = await get_request(session, request_id, lock=True)
    before = _require(request, ("identity_verified",), "start")
    request.status = "in_progress"
    await _log(session, request, principal, "started", before)
    return request


async def complete(
    session: AsyncSession,
    settings: Settings,
    catalogue: Catalogue,
    principal: Principal,
    request_id: uuid.UUID,
    payload: Completion,
) -> DataSubjectRequest:
    """Close the request with what was done. Some types do it here, in the same transaction:
    an access request gets the subject's export attached; a deletion request withdraws every
    consent, erases attributes and OS observations and tells recipients to delete; an account
    cancellation request does that and cancels the account."""
    request = await get_request(session, request_id, lock=True)
    before = _require(request, ("in_progress",), "complete")
    if request.repeated and payload.fee is None:
        raise InvalidInput(
            "this request repeats one of the same type within 12 months: record the fee "
            "decision (waived or charged)",
            errors=[FieldError(loc=["body", "fee"], msg="required: repeated", type="missing")],
        )
    if not request.repeated and payload.fee is not None:
        raise InvalidInput(
            "a fee applies only to repeated requests",
            errors=[FieldError(loc=["body", "fee"], msg="not repeated", type="value_error")],
        )
    done: dict[str, Any] = {}
    # The subject's lock: no change to it can slip in between what is read here and what is
    # done (an export that agrees with itself; no cancellation racing a deletion).
    subject = await lock_subject(session, request.subject_id)
    if request.type == "access":
        export = await export_subject(session, catalogue, settings, request.subject_id)
        request.export = export.model_dump(mode="json")
        done["export_events"] = len(export.events)
    elif request.type in ("deletion", "account_cancellation"):
        cancel = request.type == "account_cancellation"
        if subject.status != "cancelled":  # a cancellation has erased everything already
            erasure = await erase_subject(
                session,
                catalogue,
                settings,
                principal,
                request.subject_id,
                reason=f"{request.type.replace('_', ' ')} request {request.id}",
                source="data_subject_request",
                request_id=str(request.id),
                cancel=cancel,
            )
            done |= {
                "consents_withdrawn": erasure.withdrawn,
                "observations_erased": erasure.observations,
                "recipients_notified": erasure.notified,
            }
    request.status, request.resolution, request.fee = "completed", payload.resolution, payload.fee
    request.closed_at = utcnow()
    await _log(session, request, principal, "completed", before, fee=payload.fee, **done)
    return request


SYSTEM = Principal(actor="system", name="consent-ledger", scopes=frozenset())


async def open_child_deletion(
    session: AsyncSession, settings: Settings, subject: Subject, revoked: int
) -> DataSubjectRequest | None:
    """A subject found to be a child had consents no guardian backs (now revoked): open a
    deletion request for the officer ("we will try to delete the relevant data as soon as
    possible"), unless one is open already."""
    statement = select(DataSubjectRequest.id).where(
        DataSubjectRequest.subject_id == subject.id,
        DataSubjectRequest.type == "deletion",
        col(DataSubjectRequest.status).in_(OPEN),
    )
    if (await session.exec(statement)).first() is not None:
        return None
    payload = RequestCreate(
        type="deletion",
        deletion_circumstance="no_consent",
        details=f"Opened automatically: the subject is a child in {subject.jurisdiction} and "
        f"{revoked} consent(s) without a verified guardian's consent were revoked; delete what "
        "was collected under them.",
    )
    return await create_request(session, settings, SYSTEM, subject.id, payload)


async def refuse(
    session: AsyncSession, principal: Principal, request_id: uuid.UUID, payload: Refusal
) -> DataSubjectRequest:
    request = await get_request(session, request_id, lock=True)
    before = _require(request, OPEN, "refuse")
    request.status = "refused"
    request.refusal_ground, request.refusal_reason = payload.ground, payload.reason
    request.closed_at = utcnow()
    await _log(session, request, principal, "refused", before, ground=payload.ground)
    return request


async def extend(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    request_id: uuid.UUID,
    payload: Extension,
) -> DataSubjectRequest:
    request = await get_request(session, request_id, lock=True)
    before = _require(request, OPEN, "extend")
    if request.extension_reason is not None:
        raise InvalidTransition("this request was extended already; it can be extended once")
    if request.due_at < utcnow():
        raise InvalidTransition(
            "this request is overdue: an extension has to be decided, and told to the subject, "
            "before the deadline passes"
        )
    due, longest = rule_for(settings, request.jurisdiction)
    new_due = extended_due(request.received_at, due, payload.period)
    if new_due > extended_due(request.received_at, due, longest):
        raise InvalidInput(
            f"in {request.jurisdiction} a request can be extended by {longest} at most",
            errors=[FieldError(loc=["body", "period"], msg="too long", type="value_error")],
        )
    request.due_at, request.extension_reason = new_due, payload.reason
    await _log(session, request, principal, "extended", before, period=payload.period)
    return request


async def cancel(
    session: AsyncSession, principal: Principal, request_id: uuid.UUID, payload: CancellationInput
) -> DataSubjectRequest:
    request = await get_request(session, request_id, lock=True)
    before = _require(request, OPEN, "cancel")
    request.status, request.closed_at = "cancelled", utcnow()
    await _log(session, request, principal, "cancelled", before, reason=payload.reason)
    return request
