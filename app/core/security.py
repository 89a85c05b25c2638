"""Who is calling, and what they may do.

Two kinds of credential arrive as ``Authorization: Bearer <credential>``:

- an **API key** (``clk_…``) of a service or a member of staff, with one role. A role is a named
  bundle of scopes; routes check scopes, never roles. Keys are stored as a SHA-256 digest only and
  looked up on every request, so a revoked key stops working at once on every worker.
- a **subject token**: a short-lived HS256 JWT the app mints for one subject's settings screen. It
  reaches only that subject: any other subject id answers 404, as if it did not exist.

Routes declare what they need with ``Annotated[Principal, requires(Scope.X)]``.
"""

import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, get_args

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, update
from sqlmodel import col, select

from app.core.db import Database, DatabaseDep
from app.core.errors import Forbidden, SubjectNotFound, Unauthenticated
from app.core.types import utcnow
from app.models import ApiKey

logger = logging.getLogger("consent_ledger")


class Scope(StrEnum):
    CATALOGUE_READ = "catalogue:read"
    SUBJECTS_READ = "subjects:read"
    SUBJECTS_WRITE = "subjects:write"
    SUBJECTS_CANCEL = "subjects:cancel"
    SUBJECTS_EXPORT = "subjects:export"
    CONSENTS_READ = "consents:read"
    CONSENTS_WRITE = "consents:write"
    CHECKS_RUN = "checks:run"
    TOKENS_CREATE = "tokens:create"
    GUARDIANS_WRITE = "guardians:write"
    PERMISSIONS_WRITE = "permissions:write"
    POLICIES_WRITE = "policies:write"
    AUDIT_READ = "audit:read"
    AUDIT_CHECKPOINT = "audit:checkpoint"
    REQUESTS_CREATE = "requests:create"
    REQUESTS_READ = "requests:read"
    REQUESTS_MANAGE = "requests:manage"
    RECIPIENTS_READ = "recipients:read"
    RECIPIENTS_MANAGE = "recipients:manage"
    METRICS_READ = "metrics:read"
    KEYS_MANAGE = "keys:manage"


Role = Literal["app", "auditor", "officer", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)

_AUDITOR = frozenset(
    {
        Scope.CATALOGUE_READ,
        Scope.SUBJECTS_READ,
        Scope.CONSENTS_READ,
        Scope.AUDIT_READ,
        Scope.REQUESTS_READ,
        Scope.RECIPIENTS_READ,
        Scope.METRICS_READ,
    }
)
ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    "app": frozenset(
        {
            Scope.CATALOGUE_READ,
            Scope.SUBJECTS_READ,
            Scope.SUBJECTS_WRITE,
            Scope.SUBJECTS_CANCEL,
            Scope.SUBJECTS_EXPORT,
            Scope.CONSENTS_READ,
            Scope.CONSENTS_WRITE,
            Scope.CHECKS_RUN,
            Scope.TOKENS_CREATE,
            Scope.GUARDIANS_WRITE,
            Scope.PERMISSIONS_WRITE,
        }
    ),
    "auditor": _AUDITOR,
    "officer": _AUDITOR
    | {
        Scope.SUBJECTS_WRITE,
        Scope.SUBJECTS_CANCEL,
        Scope.SUBJECTS_EXPORT,
        Scope.POLICIES_WRITE,
        Scope.AUDIT_CHECKPOINT,
        Scope.REQUESTS_CREATE,
        Scope.REQUESTS_MANAGE,
        Scope.RECIPIENTS_MANAGE,
    },
    "admin": frozenset(Scope),
}
# What a subject token may do, and only to its own subject.
SUBJECT_TOKEN_SCOPES = frozenset(
    {
        Scope.CATALOGUE_READ,
        Scope.SUBJECTS_READ,
        Scope.SUBJECTS_CANCEL,
        Scope.SUBJECTS_EXPORT,
        Scope.CONSENTS_READ,
        Scope.CONSENTS_WRITE,
        Scope.REQUESTS_CREATE,
        Scope.REQUESTS_READ,
    }
)
# Scopes a subject token may use on routes that name no subject (nothing personal behind them).
_UNBOUND_SCOPES = frozenset({Scope.CATALOGUE_READ})


@dataclass(frozen=True)
class Principal:
    """The caller of one request. ``actor`` and ``name`` go into every ledger event it causes."""

    actor: str  # the key's role, or "subject" for a subject token
    name: str  # the key's name, or the subject id
    scopes: frozenset[Scope] = field(repr=False)
    subject_id: str | None = None  # set for subject tokens: the one subject they reach
    issued_by: str | None = None  # for subject tokens: "role:name" of the key that minted it

    @property
    def idempotency_scope(self) -> str:
        """Short and fixed-size for subjects, whose ids may be as long as the column."""
        if self.subject_id is not None:
            return "subject:" + hashlib.sha256(self.subject_id.encode()).hexdigest()
        return f"{self.actor}:{self.name}"

    def describe(self) -> str:
        if self.subject_id is not None:
            return "a subject token"
        return f"the API key {self.name!r} (role {self.actor})"


# --- API keys --------------------------------------------------------------------------------

KEY_PREFIX = "clk_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def new_api_key() -> str:
    """256 random bits, URL-safe, recognisable by its prefix (for secret scanners, too)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def _find_key(database: Database, column: Any, value: str) -> ApiKey | None:
    async with database.read_sessions() as session, session.begin():
        return (await session.exec(select(ApiKey).where(column == value))).first()


async def _key_principal(database: Database, key: str) -> Principal:
    digest = hash_api_key(key)
    found = await _find_key(database, ApiKey.key_hash, digest)
    if found is not None and not hmac.compare_digest(found.key_hash, digest):
        found = None
    return key_principal(database, found)


class KeyFacts(Protocol):
    """An API key's row, from the ORM or from the check's hot path."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def last_used_at(self) -> datetime | None: ...


def key_principal(database: Database, found: KeyFacts | None) -> Principal:
    """The caller behind an API key found by its digest (None: no such key), or a 401."""
    if found is None:
        raise Unauthenticated("The API key is not valid.")
    if found.revoked_at is not None:
        raise Unauthenticated(f"The API key {found.name!r} has been revoked.")
    _note_use(database, found)
    role: Role = found.role  # type: ignore[assignment]  # the column only holds roles
    return Principal(actor=role, name=found.name, scopes=ROLE_SCOPES[role])


# Keys this process recorded a use of in the last minute.
_recent_uses: dict[uuid.UUID, datetime] = {}


def _note_use(database: Database, key: KeyFacts) -> None:
    """Record the last use, to the minute, in the background: at most one small write per key
    per minute per process, and a request never waits for it (nor fails because of it)."""
    now = utcnow()
    last = max(filter(None, (key.last_used_at, _recent_uses.get(key.id))), default=None)
    if last is not None and now - last < LAST_USED_RESOLUTION:
        return
    _recent_uses[key.id] = now
    database.in_background(_touch(database, key.id, now.replace(second=0, microsecond=0)))


async def _touch(database: Database, key_id: uuid.UUID, minute: datetime) -> None:
    try:
        async with database.write_sessions() as session, session.begin():
            await session.exec(
                update(ApiKey)
                .where(col(ApiKey.id) == key_id)
                .where(or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) < minute))
                .values(last_used_at=minute)
            )
    except Exception:  # bookkeeping only: never worth failing a request or crashing the loop
        logger.warning("could not record the last use of API key %s", key_id, exc_info=True)


# --- subject tokens --------------------------------------------------------------------------

TOKEN_AUDIENCE = "consent-ledger:subject"  # noqa: S105 (a claim value, not a secret)
TOKEN_ALGORITHM = "HS256"  # noqa: S105


def mint_subject_token(
    secret: str, subject_id: str, ttl: timedelta, issued_by: str
) -> tuple[str, datetime]:
    """A token for ``subject_id``; ``issued_by`` is the name of the key that asked for it, so
    revoking that key ends its tokens too."""
    now = utcnow()
    expires_at = now + ttl
    claims = {
        "sub": subject_id,
        "aud": TOKEN_AUDIENCE,
        "azp": issued_by,
        "iat": now,
        "exp": expires_at,
    }
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM), expires_at


def decode_subject_token(secret: str, token: str) -> tuple[str, str]:
    """The subject a token reaches and the name of the key that minted it, or a 401."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[TOKEN_ALGORITHM],
            audience=TOKEN_AUDIENCE,
            options={"require": ["sub", "aud", "exp", "azp"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("The subject token has expired; ask the app for a new one.") from None
    except jwt.InvalidTokenError:
        raise Unauthenticated(
            "The credential is neither a valid API key nor a valid subject token."
        ) from None
    subject_id, issued_by = claims["sub"], claims["azp"]
    if not isinstance(subject_id, str) or not isinstance(issued_by, str):
        raise Unauthenticated("The subject token is malformed.")
    return subject_id, issued_by


def token_principal(subject_id: str, issuer: KeyFacts | None) -> Principal:
    """The caller behind a valid subject token, given the key that minted it (found by name)."""
    if issuer is None or issuer.revoked_at is not None:
        raise Unauthenticated("The key that issued this subject token has been revoked.")
    return Principal(
        actor="subject",
        name=subject_id,
        scopes=SUBJECT_TOKEN_SCOPES,
        subject_id=subject_id,
        issued_by=f"{issuer.role}:{issuer.name}",
    )


async def _token_principal(database: Database, secret: str, token: str) -> Principal:
    subject_id, issued_by = decode_subject_token(secret, token)
    return token_principal(subject_id, await _find_key(database, ApiKey.name, issued_by))


# --- the dependencies ------------------------------------------------------------------------

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="credential",
    description="An API key (`clk_…`) or a subject token: `Authorization: Bearer <credential>`.",
)


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database: DatabaseDep,
) -> Principal:
    if credentials is None:
        raise Unauthenticated(
            "This route needs a credential: send Authorization: Bearer <API key or subject token>."
        )
    credential = credentials.credentials
    if credential.startswith(KEY_PREFIX):
        return await _key_principal(database, credential)
    secret: str = request.app.state.signing_secret
    return await _token_principal(database, secret, credential)


PrincipalDep = Annotated[Principal, Depends(authenticate)]


@dataclass(frozen=True, slots=True)
class Credential:
    """What the route can tell of the caller without the database: the key row to look for
    (an API key by its digest; a subject token's issuer by name) and a token's subject."""

    column: Literal["key_hash", "name"]
    value: str
    subject_id: str | None = None  # a subject token's

    def principal(self, database: Database, key: KeyFacts | None) -> Principal:
        if self.subject_id is None:
            return key_principal(database, key)
        return token_principal(self.subject_id, key)

    def idempotency_scope(self, key: KeyFacts | None) -> str | None:
        """``Principal.idempotency_scope``, as far as it is known before the key row."""
        if self.subject_id is not None:
            return "subject:" + hashlib.sha256(self.subject_id.encode()).hexdigest()
        return None if key is None else f"{key.role}:{key.name}"


async def get_credential(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Credential:
    """For routes that look the key up in their own statement (the hot paths): everything that
    needs no database, a 401 for no credential or a bad token."""
    if credentials is None:
        raise Unauthenticated(
            "This route needs a credential: send Authorization: Bearer <API key or subject token>."
        )
    credential = credentials.credentials
    if credential.startswith(KEY_PREFIX):
        return Credential("key_hash", hash_api_key(credential))
    subject_id, issued_by = decode_subject_token(request.app.state.signing_secret, credential)
    return Credential("name", issued_by, subject_id)


CredentialDep = Annotated[Credential, Depends(get_credential)]


def require_scope(principal: Principal, scope: Scope) -> None:
    if scope not in principal.scopes:
        raise Forbidden(
            f"This route needs the scope {scope.value!r}, which {principal.describe()} "
            "does not have.",
            missing_scope=scope.value,
        )


def authorize(principal: Principal, scope: Scope, subject_id: str | None) -> None:
    """403 without ``scope``; for a subject token, 404 for any subject but its own (as if that
    subject did not exist, so a token cannot probe who else is a user)."""
    require_scope(principal, scope)
    if principal.subject_id is not None and scope not in _UNBOUND_SCOPES:
        if subject_id is None:
            raise Forbidden("A subject token reaches only its own subject's routes.")
        if subject_id != principal.subject_id:
            raise SubjectNotFound(f"no subject {subject_id!r}")


def requires(scope: Scope) -> Any:
    """A dependency: the caller, if its credential carries ``scope`` (403 otherwise).

    A subject token also has to name its own subject in the path; another subject's id answers the
    same 404 as a subject that does not exist, so a token cannot probe who else is a user.
    """

    async def dependency(request: Request, principal: PrincipalDep) -> Principal:
        authorize(principal, scope, request.path_params.get("subject_id"))
        return principal

    dependency.__name__ = f"requires_{scope.name.lower()}"
    return Depends(dependency)
