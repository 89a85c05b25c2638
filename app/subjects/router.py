from typing import Annotated

from fastapi import APIRouter, Request, Response

from app.audit.export import snapshot
from app.consents.service import revoke_unbacked
from app.core.config import Settings, SettingsDep
from app.core.db import DatabaseDep, ReadSessionDep, WriteSessionDep
from app.core.errors import InvalidInput, SubjectNotFound, problem_responses
from app.core.idempotency import WritesDep
from app.core.schemas import SubjectIdPath
from app.core.security import Principal, Scope, requires
from app.core.types import utcnow
from app.models import Subject
from app.requests.service import open_child_deletion
from app.subjects import service
from app.subjects.age import is_child
from app.subjects.erasure import Erasure, erase_subject
from app.subjects.export import export_subject
from app.subjects.schemas import (
    CancellationCreate,
    ErasurePublic,
    GuardianConsentCreate,
    GuardianConsentList,
    GuardianConsentPublic,
    SubjectExport,
    SubjectPublic,
    SubjectPut,
)
from app.subjects.service import SubjectCancelled

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])

ReadSubjects = Annotated[Principal, requires(Scope.SUBJECTS_READ)]
WriteSubjects = Annotated[Principal, requires(Scope.SUBJECTS_WRITE)]
ReadConsents = Annotated[Principal, requires(Scope.CONSENTS_READ)]
WriteGuardians = Annotated[Principal, requires(Scope.GUARDIANS_WRITE)]
CancelSubjects = Annotated[Principal, requires(Scope.SUBJECTS_CANCEL)]
ExportSubjects = Annotated[Principal, requires(Scope.SUBJECTS_EXPORT)]


def _public(subject: Subject, settings: Settings) -> SubjectPublic:
    return SubjectPublic.model_validate(
        {**subject.model_dump(), "child": is_child(subject, settings, utcnow())}
    )


@router.put(
    "/{subject_id}",
    operation_id="subjects-put",
    response_model=SubjectPublic,
    responses={
        201: {"model": SubjectPublic, "description": "Created"},
        **problem_responses(SubjectCancelled),
    },
)
async def put_subject(
    subject_id: SubjectIdPath,
    payload: SubjectPut,
    settings: SettingsDep,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: WriteSubjects,
) -> Response:
    """Create a subject or replace its attributes. 201 when created, 200 when updated.

    If the new attributes make the subject a child and no verified guardian consent is on file,
    every consent they had given is revoked in the same transaction (actor `system`, recipients
    told to stop), and a deletion request is opened for the officer (circumstance `no_consent`).
    A cancelled account's attributes cannot change (409)."""

    async def work() -> tuple[int, SubjectPublic]:
        subject, created = await service.put_subject(session, subject_id, payload)
        revoked = await revoke_unbacked(session, settings, subject)
        if revoked:
            await open_child_deletion(session, settings, subject, revoked)
        return (201 if created else 200), _public(subject, settings)

    return await writes.run(payload, work)


@router.get(
    "/{subject_id}",
    operation_id="subjects-get",
    response_model=SubjectPublic,
    responses=problem_responses(SubjectNotFound),
)
async def get_subject(
    subject_id: SubjectIdPath,
    settings: SettingsDep,
    session: ReadSessionDep,
    _principal: ReadSubjects,
) -> SubjectPublic:
    async with session.begin():
        subject = await service.get_subject(session, subject_id)
    return _public(subject, settings)


@router.post(
    "/{subject_id}/guardian-consents",
    operation_id="subjects-add-guardian-consent",
    status_code=201,
    response_model=GuardianConsentPublic,
    responses=problem_responses(InvalidInput, SubjectCancelled),
)
async def add_guardian_consent(
    subject_id: SubjectIdPath,
    payload: GuardianConsentCreate,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: WriteGuardians,
) -> Response:
    """Record that a guardian of this (child) subject was verified and consents to the app
    asking on the child's behalf. From then on, the child's consent changes name the guardian
    as actor. Guardian records are never changed or removed."""

    async def work() -> tuple[int, GuardianConsentPublic]:
        guardian = await service.record_guardian(session, principal, subject_id, payload)
        return 201, GuardianConsentPublic.model_validate(guardian, from_attributes=True)

    return await writes.run(payload, work)


@router.get(
    "/{subject_id}/guardian-consents",
    operation_id="subjects-list-guardian-consents",
    response_model=GuardianConsentList,
    responses=problem_responses(SubjectNotFound),
)
async def list_guardian_consents(
    subject_id: SubjectIdPath, session: ReadSessionDep, _principal: ReadConsents
) -> GuardianConsentList:
    async with session.begin():
        guardians = await service.list_guardians(session, subject_id)
    return GuardianConsentList(
        items=[GuardianConsentPublic.model_validate(g, from_attributes=True) for g in guardians]
    )


@router.post(
    "/{subject_id}/cancellation",
    operation_id="subjects-cancel",
    response_model=ErasurePublic,
    responses=problem_responses(SubjectNotFound, SubjectCancelled),
)
async def cancel_account(
    subject_id: SubjectIdPath,
    payload: CancellationCreate,
    request: Request,
    settings: SettingsDep,
    session: WriteSessionDep,
    writes: WritesDep,
    principal: CancelSubjects,
) -> Response:
    """Cancel the account, in one transaction: every given consent is withdrawn (ledger events
    naming the caller), the subject becomes `cancelled` (every later check answers
    `account_cancelled`, and its consents can no longer change), its attributes and OS
    observations are erased, and every recipient that may hold its data is told to delete it.
    The ledger stays, under the pseudonymous subject id, as proof of what was lawful before.
    A second cancellation is a 409."""

    async def work() -> tuple[int, ErasurePublic]:
        erasure = await erase_subject(
            session,
            request.app.state.catalogue,
            settings,
            principal,
            subject_id,
            reason=payload.reason or "account cancelled",
            source="account_cancellation",
            cancel=True,
        )
        return 200, erasure_public(erasure, settings)

    return await writes.run(payload, work)


@router.get(
    "/{subject_id}/export",
    operation_id="subjects-export",
    response_model=SubjectExport,
    responses=problem_responses(SubjectNotFound),
)
async def export(
    subject_id: SubjectIdPath,
    request: Request,
    settings: SettingsDep,
    database: DatabaseDep,
    _principal: ExportSubjects,
) -> SubjectExport:
    """Everything held about the subject, as one document, read from one snapshot: attributes,
    every consent with its decision, the whole ledger, OS observations, guardian records and
    data-subject requests with their logs. Completing an `access` request attaches a copy."""
    async with snapshot(database) as session, session.begin():
        return await export_subject(session, request.app.state.catalogue, settings, subject_id)


def erasure_public(erasure: Erasure, settings: Settings) -> ErasurePublic:
    return ErasurePublic(
        subject=_public(erasure.subject, settings),
        consents_withdrawn=erasure.withdrawn,
        observations_erased=erasure.observations,
        recipients_notified=erasure.notified,
    )
