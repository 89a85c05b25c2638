from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from app.catalogue.router import CatalogueDep
from app.catalogue.service import resolve_pair
from app.checks import service
from app.checks.schemas import CheckRequest, CheckResponse, DecisionPublic
from app.core.config import SettingsDep
from app.core.db import ReadSessionDep
from app.core.errors import InvalidInput, problem_responses
from app.core.schemas import NO_CONTROL_CHARACTERS, SUBJECT_ID_DESCRIPTION
from app.core.security import Principal, Scope, requires

router = APIRouter(prefix="/v1/checks", tags=["checks"])

RunChecks = Annotated[Principal, requires(Scope.CHECKS_RUN)]


@router.post(
    "",
    operation_id="checks-create",
    response_model=CheckResponse,
    responses=problem_responses(InvalidInput),
)
async def check_many(
    payload: CheckRequest,
    catalogue: CatalogueDep,
    settings: SettingsDep,
    session: ReadSessionDep,
    _principal: RunChecks,
) -> CheckResponse:
    """May the app process each (target, purpose) for this subject, right now? Up to 100 items."""
    pairs = [
        resolve_pair(catalogue, item.target, item.purpose, ("body", "items", i))
        for i, item in enumerate(payload.items)
    ]
    async with session.begin():
        decisions = await service.check(
            session, settings, payload.subject_id, pairs, payload.device_id
        )
    return CheckResponse(
        subject_id=payload.subject_id,
        decisions=[DecisionPublic(**asdict(d)) for d in decisions],
    )


@router.get(
    "",
    operation_id="checks-get",
    response_model=CheckResponse,
    responses=problem_responses(InvalidInput),
)
async def check_one(
    subject_id: Annotated[
        str,
        Query(
            min_length=1,
            max_length=255,
            pattern=NO_CONTROL_CHARACTERS,
            description=SUBJECT_ID_DESCRIPTION,
        ),
    ],
    target: Annotated[str, Query(min_length=1, max_length=64)],
    purpose: Annotated[str, Query(min_length=1, max_length=64)],
    catalogue: CatalogueDep,
    settings: SettingsDep,
    session: ReadSessionDep,
    _principal: RunChecks,
    device_id: Annotated[
        str | None,
        Query(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS),
    ] = None,
) -> CheckResponse:
    """One decision, in the same shape as ``POST /v1/checks``."""
    pair = resolve_pair(catalogue, target, purpose, ("query",))
    async with session.begin():
        [decision] = await service.check(session, settings, subject_id, [pair], device_id)
    return CheckResponse(subject_id=subject_id, decisions=[DecisionPublic(**asdict(decision))])
