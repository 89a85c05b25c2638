from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.catalogue.loader import Catalogue
from app.catalogue.router import CatalogueDep
from app.catalogue.service import current_policy_version
from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import InvalidInput, problem_responses
from app.core.idempotency import WritesDep
from app.core.security import Principal, Scope, requires
from app.models import PolicyVersion
from app.policies import service
from app.policies.schemas import (
    VERSION_PATTERN,
    PolicyCreate,
    PolicyDetail,
    PolicyList,
    PolicyPublic,
)
from app.policies.service import PolicyNotFound, PolicyVersionConflict

router = APIRouter(prefix="/v1/policies", tags=["policies"])

ReadPolicies = Annotated[Principal, requires(Scope.CATALOGUE_READ)]
PublishPolicies = Annotated[Principal, requires(Scope.POLICIES_WRITE)]


def _public(policy: PolicyVersion, catalogue: Catalogue, current: str | None) -> dict[str, object]:
    targets = sorted(
        {
            t
            for p in policy.affected_purposes
            if p in catalogue.purposes
            for t in catalogue.purposes[p].targets
        }
    )
    return {
        **policy.model_dump(),
        "affected_targets": targets,
        "current": policy.version == current,
    }


@router.get("", operation_id="policies-list", response_model=PolicyList)
async def list_policies(
    catalogue: CatalogueDep, session: ReadSessionDep, _principal: ReadPolicies
) -> PolicyList:
    """Every version ever published, newest first ("we will also archive older versions")."""
    async with session.begin():
        policies = await service.list_policies(session)
        current = await current_policy_version(session)
    return PolicyList(
        items=[PolicyPublic.model_validate(_public(p, catalogue, current)) for p in policies]
    )


@router.get(
    "/{version}",
    operation_id="policies-get",
    response_model=PolicyDetail,
    responses=problem_responses(PolicyNotFound),
)
async def get_policy(
    version: Annotated[str, Path(min_length=1, max_length=64, pattern=VERSION_PATTERN)],
    catalogue: CatalogueDep,
    session: ReadSessionDep,
    _principal: ReadPolicies,
) -> PolicyDetail:
    async with session.begin():
        policy = await service.get_policy(session, version)
        current = await current_policy_version(session)
    return PolicyDetail.model_validate(_public(policy, catalogue, current))


@router.post(
    "",
    operation_id="policies-publish",
    status_code=201,
    response_model=PolicyDetail,
    responses=problem_responses(InvalidInput, PolicyVersionConflict),
)
async def publish_policy(
    payload: PolicyCreate,
    catalogue: CatalogueDep,
    session: WriteSessionDep,
    writes: WritesDep,
    _principal: PublishPolicies,
) -> Response:
    """Publish a policy version. 201 when new; 200 when the same content was published before;
    409 for other content under a published version id. A `material` version makes consents
    given under older versions, for the purposes it affects, answer `reconsent_required`."""

    async def work() -> tuple[int, PolicyDetail]:
        policy, created = await service.publish(session, catalogue, payload)
        current = await current_policy_version(session)
        detail = PolicyDetail.model_validate(_public(policy, catalogue, current))
        return (201 if created else 200), detail

    return await writes.run(payload, work)
