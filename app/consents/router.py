from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.catalogue.router import CatalogueDep
from app.consents import events as events_service
from app.consents import service
from app.consents.schemas import ConsentBatch, ConsentList, ConsentPublic, ConsentSet, EventPublic
from app.consents.service import (
    GuardianConsentRequired,
    NotConsentBased,
    NothingToWithdraw,
    PolicyVersionSuperseded,
    SeparateConsentRequired,
)
from app.core.config import SettingsDep
from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import FieldError, InvalidInput, SubjectNotFound, problem_responses
from app.core.idempotency import WritesDep
from app.core.pagination import CursorQuery, LimitQuery, Page
from app.core.schemas import CatalogueKey, InputInstant, SubjectIdPath
from app.core.security import Principal, Scope, requires
from app.subjects.service import SubjectCancelled

router = APIRouter(prefix="/v1/subjects/{subject_id}", tags=["consents"])

ReadConsents = Annotated[Principal, requires(Scope.CONSENTS_READ)]
WriteConsents = Annotated[Principal, requires(Scope.CONSENTS_WRITE)]

WRITE_ERRORS = problem_responses(
    InvalidInput,
    SeparateConsentRequired,
    NotConsentBased,
    NothingToWithdraw,
    SubjectCancelled,
    GuardianConsentRequired,
    PolicyVersionSuperseded,
)


@router.get(
    "/consents",
    operation_id="consents-list",
    response_model=ConsentList,
    responses=problem_responses(SubjectNotFound, InvalidInput),
)
async def list_consents(
    subject_id: SubjectIdPath,
    catalogue: CatalogueDep,
    settings: SettingsDep,
    session: ReadSessionDep,
    _principal: ReadConsents,
    as_of: Annotated[
        InputInstant | None,
        Query(
            description="An instant with a time zone, e.g. 2026-01-31T12:00:00Z: the state then."
        ),
    ] = None,
) -> ConsentList:
    """Every (target, purpose) the catalogue allows, with its state and decision."""
    async with session.begin():
        return await service.list_consents(session, catalogue, settings, subject_id, as_of)


@router.put(
    "/consents/{target}/{purpose}",
    operation_id="consents-set",
    response_model=ConsentPublic,
    responses=WRITE_ERRORS,
)
async def set_consent(
    subject_id: SubjectIdPath,
    target: CatalogueKey,
    purpose: CatalogueKey,
    payload: ConsentSet,
    catalogue: CatalogueDep,
    settings: SettingsDep,
    session: WriteSessionDep,
    principal: WriteConsents,
    writes: WritesDep,
) -> Response:
    """Give, refuse or withdraw one consent. The subject is created if it does not exist."""
    change = service.validate_change(
        catalogue,
        target=target,
        purpose=purpose,
        state=payload.state,
        expires_at=payload.expires_at,
        evidence={},
        loc=("path",),
    )

    async def work() -> tuple[int, ConsentPublic]:
        [result] = await service.apply_changes(
            session, principal, settings, subject_id, [change], payload
        )
        return 200, result

    return await writes.run(payload, work)


@router.post(
    "/consents",
    operation_id="consents-set-many",
    response_model=ConsentList,
    responses=WRITE_ERRORS,
)
async def set_consents(
    subject_id: SubjectIdPath,
    payload: ConsentBatch,
    catalogue: CatalogueDep,
    settings: SettingsDep,
    session: WriteSessionDep,
    principal: WriteConsents,
    writes: WritesDep,
) -> Response:
    """Change many consents at once, atomically: one bad item and nothing is written; the error
    names the item (``errors[].loc``)."""
    changes: list[service.Change] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(payload.changes):
        loc = ("body", "changes", i)
        key = (item.target, item.purpose)
        if key in seen:
            raise InvalidInput(
                f"changes[{i}] repeats changes[{seen[key]}] ({item.target}, {item.purpose}); "
                "send one change per pair",
                errors=[FieldError(loc=list(loc), msg="duplicate pair", type="duplicate_pair")],
            )
        seen[key] = i
        changes.append(
            service.validate_change(
                catalogue,
                target=item.target,
                purpose=item.purpose,
                state=item.state,
                expires_at=item.expires_at,
                evidence=item.evidence,
                loc=loc,
            )
        )

    async def work() -> tuple[int, ConsentList]:
        items = await service.apply_changes(
            session, principal, settings, subject_id, changes, payload
        )
        return 200, ConsentList(subject_id=subject_id, as_of=None, items=items)

    return await writes.run(payload, work)


@router.get(
    "/events",
    operation_id="consents-events",
    response_model=Page[EventPublic],
    responses=problem_responses(SubjectNotFound, InvalidInput),
)
async def list_events(
    subject_id: SubjectIdPath,
    session: ReadSessionDep,
    _principal: ReadConsents,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> Page[EventPublic]:
    """The subject's ledger, oldest first."""
    async with session.begin():
        return await events_service.list_events(session, subject_id, limit=limit, cursor=cursor)
