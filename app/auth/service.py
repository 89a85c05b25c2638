"""API keys: create (the secret is returned once), list, revoke."""

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.errors import Conflict, NotFound
from app.core.security import KEY_PREFIX, Role, hash_api_key, new_api_key
from app.core.types import utcnow
from app.models import ApiKey

PREFIX_LENGTH = len(KEY_PREFIX) + 6


class KeyNameTaken(Conflict):
    slug = "key-name-taken"
    title = "Key name taken"


class KeyNotFound(NotFound):
    slug = "key-not-found"
    title = "Key not found"


async def create_key(session: AsyncSession, name: str, role: Role) -> tuple[ApiKey, str]:
    """A new key and its secret. The caller shows the secret once; it is not stored."""
    secret = new_api_key()
    key = ApiKey(name=name, role=role, key_hash=hash_api_key(secret), prefix=secret[:PREFIX_LENGTH])
    session.add(key)
    try:
        await session.flush()
    except IntegrityError:
        raise KeyNameTaken(
            f"a key named {name!r} exists (names are never reused, even after revocation)"
        ) from None
    return key, secret


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.exec(select(ApiKey).order_by(col(ApiKey.created_at)))).all())


async def count_keys(session: AsyncSession) -> int:
    return (await session.exec(select(func.count()).select_from(ApiKey))).one()


async def revoke_key(session: AsyncSession, name: str) -> ApiKey:
    """Revoke the key at once. Revoking a revoked key changes nothing."""
    key = (await session.exec(select(ApiKey).where(ApiKey.name == name).with_for_update())).first()
    if key is None:
        raise KeyNotFound(f"no key named {name!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        await session.flush()
    return key
