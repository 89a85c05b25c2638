from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.routing import Route

from app.catalogue.loader import Catalogue
from app.catalogue.router import CatalogueDep
from app.consents import events as events_service
from app.consents import service
from app.consents.fast import write_changes
from app.consents.schemas import ConsentBatch, ConsentList, ConsentPublic, ConsentSet, EventPublic
from app.consents.service import (
    GuardianConsentRequired,
    NotConsentBased,
    NothingToWithdraw,
    PolicyVersionSuperseded,
    SeparateConsentRequired,
)
from app.core.config import SettingsDep
from app.core.db import ReadSessionDep
from app.core.errors import FieldError, InvalidInput, SubjectNotFound, problem_responses
from app.core.idempotency import IdempotencyKey, IdempotencyKeyHeader
from app.core.pagination import CursorQuery, LimitQuery, Page
from app.core.schemas import (
    CatalogueKey,
    InputInstant,
    Parsed,
    SubjectId,
    SubjectIdPath,
    read_body,
    read_params,
)
from app.core.security import CredentialDep, Principal, Scope, bearer, get_credential, requires
from app.subjects.service import SubjectCancelled

router = APIRouter(prefix="/v1/subjects/{subject_id}", tags=["consents"])
M = TypeVar("M", bound=BaseModel)

ReadConsents = Annotated[Principal, requires(Scope.CONSENTS_READ)]
# Consent changes are authenticated by their own read (app.consents.fast): the credential is
# parsed by CredentialDep, the key looked up there, and consents:write required of it.

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
    request: Request,
    subject_id: SubjectIdPath,
    target: CatalogueKey,
    purpose: CatalogueKey,
    payload: ConsentSet,
    credential: CredentialDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Give, refuse or withdraw one consent. The subject is created if it does not exist."""
    catalogue: Catalogue = request.app.state.catalogue
    change = service.validate_change(
        catalogue,
        target=target,
        purpose=purpose,
        state=payload.state,
        expires_at=payload.expires_at,
        evidence={},
        loc=("path",),
    )
    return await write_changes(
        request, credential, subject_id, [change], payload, idempotency_key, lambda items: items[0]
    )


@router.post(
    "/consents",
    operation_id="consents-set-many",
    response_model=ConsentList,
    responses=WRITE_ERRORS,
)
async def set_consents(
    request: Request,
    subject_id: SubjectIdPath,
    payload: ConsentBatch,
    credential: CredentialDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Change many consents at once, atomically: one bad item and nothing is written; the error
    names the item (``errors[].loc``)."""
    catalogue: Catalogue = request.app.state.catalogue
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
    return await write_changes(
        request,
        credential,
        subject_id,
        changes,
        payload,
        idempotency_key,
        lambda items: ConsentList(subject_id=subject_id, as_of=None, items=items),
    )


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


# The two writes above are what FastAPI documents; these serve them, ahead of FastAPI's own
# handling and middleware (app.core.serving), as the checks are (app.checks.router): the same
# parameters resolved with the same models, in FastAPI's order (the body's JSON, the credential,
# then every invalid parameter at once: path, header, body), calling the same endpoints.


class _ConsentPath(BaseModel):
    subject_id: SubjectId
    target: CatalogueKey
    purpose: CatalogueKey


class _SubjectPath(BaseModel):
    subject_id: SubjectId


class _WriteHeaders(BaseModel):
    idempotency_key: IdempotencyKey | None = Field(default=None, alias="Idempotency-Key")


def _params(request: Request, path_model: type[M], body: Parsed[Any]) -> tuple[M, str | None]:
    path, path_errors = read_params(request.path_params, path_model, "path")
    key = request.headers.get("idempotency-key")
    headers, header_errors = read_params(
        {} if key is None else {"Idempotency-Key": key}, _WriteHeaders, "header"
    )
    errors = path_errors + header_errors + body.errors
    if errors:
        raise RequestValidationError(errors)
    assert path is not None
    assert headers is not None
    return path, headers.idempotency_key


async def _serve_set_consent(request: Request) -> Response:
    payload = await read_body(request, ConsentSet)
    credential = await get_credential(request, await bearer(request))
    path, key = _params(request, _ConsentPath, payload)
    return await set_consent(
        request, path.subject_id, path.target, path.purpose, payload.get(), credential, key
    )


async def _serve_set_consents(request: Request) -> Response:
    payload = await read_body(request, ConsentBatch)
    credential = await get_credential(request, await bearer(request))
    path, key = _params(request, _SubjectPath, payload)
    return await set_consents(request, path.subject_id, payload.get(), credential, key)


direct_routes = [
    Route(
        "/v1/subjects/{subject_id}/consents/{target}/{purpose}", _serve_set_consent, methods=["PUT"]
    ),
    Route("/v1/subjects/{subject_id}/consents", _serve_set_consents, methods=["POST"]),
]
