from typing import Annotated

from fastapi import APIRouter, Response

from app.consents.service import revoke_unbacked
from app.core.config import Settings, SettingsDep
from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import InvalidInput, SubjectNotFound, problem_responses
from app.core.idempotency import WritesDep
from app.core.schemas import SubjectIdPath
from app.core.security import Principal, Scope, requires
from app.core.types import utcnow
from app.models import Subject
from app.subjects import service
from app.subjects.age import is_child
from app.subjects.schemas import (
    GuardianConsentCreate,
    GuardianConsentList,
    GuardianConsentPublic,
    SubjectPublic,
    SubjectPut,
)

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])

ReadSubjects = Annotated[Principal, requires(Scope.SUBJECTS_READ)]
WriteSubjects = Annotated[Principal, requires(Scope.SUBJECTS_WRITE)]
ReadConsents = Annotated[Principal, requires(Scope.CONSENTS_READ)]
WriteGuardians = Annotated[Principal, requires(Scope.GUARDIANS_WRITE)]


def _public(subject: Subject, settings: Settings) -> SubjectPublic:
    return SubjectPublic.model_validate(
        {**subject.model_dump(), "child": is_child(subject, settings, utcnow())}
    )


@router.put(
    "/{subject_id}",
    operation_id="subjects-put",
    response_model=SubjectPublic,
    responses={201: {"model": SubjectPublic, "description": "Created"}},
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
    every consent they had given is revoked in the same transaction (actor `system`)."""

    async def work() -> tuple[int, SubjectPublic]:
        subject, created = await service.put_subject(session, subject_id, payload)
        await revoke_unbacked(session, settings, subject)
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
    responses=problem_responses(InvalidInput),
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
