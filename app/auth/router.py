from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from app.auth import service
from app.auth.schemas import (
    KEY_NAME_PATTERN,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyPublic,
    SubjectToken,
)
from app.auth.service import KeyNameTaken, KeyNotFound
from app.core.config import SettingsDep
from app.core.db import ReadSessionDep, WriteSessionDep
from app.core.errors import problem_responses
from app.core.schemas import SubjectIdPath
from app.core.security import Principal, Scope, mint_subject_token, requires

router = APIRouter(prefix="/v1", tags=["auth"])

ManageKeys = Annotated[Principal, requires(Scope.KEYS_MANAGE)]


@router.post(
    "/subjects/{subject_id}/tokens",
    operation_id="auth-create-subject-token",
    status_code=status.HTTP_201_CREATED,
    response_model=SubjectToken,
)
async def create_subject_token(
    subject_id: SubjectIdPath,
    request: Request,
    settings: SettingsDep,
    principal: Annotated[Principal, requires(Scope.TOKENS_CREATE)],
) -> SubjectToken:
    """A short-lived token for one subject's settings screen: it reads and changes that subject's
    consents and events, and nothing else. It lives `CONSENT_LEDGER_SUBJECT_TOKEN_TTL_SECONDS`
    (default 15 minutes) and dies with the key that minted it, if that key is revoked."""
    token, expires_at = mint_subject_token(
        request.app.state.signing_secret,
        subject_id,
        timedelta(seconds=settings.subject_token_ttl_seconds),
        issued_by=principal.name,
    )
    return SubjectToken(token=token, subject_id=subject_id, expires_at=expires_at)


@router.get("/keys", operation_id="auth-list-keys", response_model=ApiKeyList)
async def list_keys(session: ReadSessionDep, _principal: ManageKeys) -> ApiKeyList:
    """Every API key, revoked ones included. Secrets are never shown again."""
    async with session.begin():
        keys = await service.list_keys(session)
    return ApiKeyList(items=[ApiKeyPublic.model_validate(k, from_attributes=True) for k in keys])


@router.post(
    "/keys",
    operation_id="auth-create-key",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=problem_responses(KeyNameTaken),
)
async def create_key(
    payload: ApiKeyCreate, session: WriteSessionDep, _principal: ManageKeys
) -> ApiKeyCreated:
    """A new key. The response is the only place the key ever appears: store it now.
    (No `Idempotency-Key` here: replaying would mean storing the key.)"""
    async with session.begin():
        key, secret = await service.create_key(session, payload.name, payload.role)
    public = ApiKeyPublic.model_validate(key, from_attributes=True)
    return ApiKeyCreated(**public.model_dump(), key=secret)


@router.post(
    "/keys/{name}/revocation",
    operation_id="auth-revoke-key",
    response_model=ApiKeyPublic,
    responses=problem_responses(KeyNotFound),
)
async def revoke_key(
    name: Annotated[str, Path(min_length=1, max_length=64, pattern=KEY_NAME_PATTERN)],
    session: WriteSessionDep,
    _principal: ManageKeys,
) -> ApiKeyPublic:
    """Revoke a key: the next request with it, on any worker, gets 401. Cannot be undone."""
    async with session.begin():
        key = await service.revoke_key(session, name)
    return ApiKeyPublic.model_validate(key, from_attributes=True)
