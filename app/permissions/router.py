from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.catalogue.router import CatalogueDep
from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import InvalidInput, SubjectNotFound, problem_responses
from app.core.idempotency import WritesDep
from app.core.schemas import NO_CONTROL_CHARACTERS, CatalogueKey, SubjectIdPath
from app.core.security import Principal, Scope, requires
from app.models import PermissionObservation
from app.permissions import service
from app.permissions.schemas import (
    PermissionObservationList,
    PermissionObservationPublic,
    PermissionObservationPut,
)
from app.subjects.service import SubjectCancelled

router = APIRouter(prefix="/v1/subjects/{subject_id}/devices/{device_id}", tags=["permissions"])

DeviceIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)]


def _public(row: PermissionObservation) -> PermissionObservationPublic:
    return PermissionObservationPublic.model_validate(
        {**row.model_dump(), "target": row.target_key}
    )


@router.put(
    "/permissions/{target}",
    operation_id="permissions-observe",
    response_model=PermissionObservationPublic,
    responses=problem_responses(InvalidInput, SubjectCancelled),
)
async def observe_permission(
    subject_id: SubjectIdPath,
    device_id: DeviceIdPath,
    target: CatalogueKey,
    payload: PermissionObservationPut,
    catalogue: CatalogueDep,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: Annotated[Principal, requires(Scope.PERMISSIONS_WRITE)],
) -> Response:
    """Record what the OS permission dialog or status API said. It never replaces consent: a
    check that names this device needs both the consent and an OS state that allows use."""
    service.validate_observation(catalogue, target, payload)

    async def work() -> tuple[int, PermissionObservationPublic]:
        row = await service.record_observation(session, subject_id, device_id, target, payload)
        return 200, _public(row)

    return await writes.run(payload, work)


@router.get(
    "/permissions",
    operation_id="permissions-list",
    response_model=PermissionObservationList,
    responses=problem_responses(SubjectNotFound),
)
async def list_permissions(
    subject_id: SubjectIdPath,
    device_id: DeviceIdPath,
    session: ReadSessionDep,
    _principal: Annotated[Principal, requires(Scope.CONSENTS_READ)],
) -> PermissionObservationList:
    async with session.begin():
        rows = await service.list_observations(session, subject_id, device_id)
    return PermissionObservationList(items=[_public(r) for r in rows])
