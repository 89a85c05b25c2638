from typing import Annotated

from fastapi import APIRouter, Response

from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import problem_responses
from app.core.idempotency import WritesDep
from app.core.schemas import SubjectIdPath
from app.core.security import Principal, Scope, requires
from app.subjects import service
from app.subjects.schemas import SubjectPublic, SubjectPut
from app.subjects.service import SubjectNotFound

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])

ReadSubjects = Annotated[Principal, requires(Scope.SUBJECTS_READ)]
WriteSubjects = Annotated[Principal, requires(Scope.SUBJECTS_WRITE)]


@router.put(
    "/{subject_id}",
    operation_id="subjects-put",
    response_model=SubjectPublic,
    responses={201: {"model": SubjectPublic, "description": "Created"}},
)
async def put_subject(
    subject_id: SubjectIdPath,
    payload: SubjectPut,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: WriteSubjects,
) -> Response:
    """Create a subject or replace its attributes. 201 when created, 200 when updated."""

    async def work() -> tuple[int, SubjectPublic]:
        subject, created = await service.put_subject(session, subject_id, payload)
        return (201 if created else 200), SubjectPublic.model_validate(
            subject, from_attributes=True
        )

    return await writes.run(payload, work)


@router.get(
    "/{subject_id}",
    operation_id="subjects-get",
    response_model=SubjectPublic,
    responses=problem_responses(SubjectNotFound),
)
async def get_subject(
    subject_id: SubjectIdPath, session: ReadSessionDep, _principal: ReadSubjects
) -> SubjectPublic:
    async with session.begin():
        subject = await service.get_subject(session, subject_id)
    return SubjectPublic.model_validate(subject, from_attributes=True)
