"""The policy archive: publish a version (never change one), read any version ever published,
and the view of them the decision needs."""

import json
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.checks.decision import Policies
from app.core.driver import when
from app.core.errors import Conflict, FieldError, InvalidInput, NotFound
from app.core.types import utcnow
from app.models import PolicyVersion
from app.policies.schemas import PolicyCreate

# A version published "now" may carry a timestamp a little behind the server's clock.
CLOCK_TOLERANCE = timedelta(minutes=5)
PUBLISH_LOCK = 0x636C5F706F6C  # "cl_pol": the advisory lock that serialises publishing


class PolicyNotFound(NotFound):
    slug = "policy-not-found"
    title = "Policy version not found"


class PolicyVersionConflict(Conflict):
    slug = "policy-version-exists"
    title = "Policy version already published"


async def _serialise_publishing(session: AsyncSession) -> None:
    """One publisher at a time, so two versions cannot both pass the ordering check. SQLite's
    write transaction already holds the database lock."""
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.exec(select(func.pg_advisory_xact_lock(PUBLISH_LOCK)))


POLICY_ROWS = "SELECT version, effective_at, material, affected_purposes FROM policy_version"


async def load_policies(session: AsyncSession) -> Policies:
    """Every version's effective time, and the material changes: one small read."""
    rows = (
        await session.exec(
            select(
                PolicyVersion.version,
                PolicyVersion.effective_at,
                PolicyVersion.material,
                PolicyVersion.affected_purposes,
            )
        )
    ).all()
    return policies_from_rows(rows)


def policies_from_rows(rows: Iterable[Sequence[Any]]) -> Policies:
    """``rows``: (version, effective_at, material, affected purposes) as ``POLICY_ROWS`` reads
    them, from the ORM or straight from a driver (instants as text, JSON as text on SQLite)."""
    versions = sorted(
        (
            when(effective_at),
            version,
            bool(material),
            json.loads(purposes) if isinstance(purposes, str) else purposes,
        )
        for version, effective_at, material, purposes in rows
    )
    return Policies(
        effective_at={version: effective_at for effective_at, version, _, _ in versions},
        material=tuple(
            (effective_at, version, frozenset(purposes))
            for effective_at, version, material, purposes in versions
            if material
        ),
    )


async def list_policies(session: AsyncSession) -> list[PolicyVersion]:
    statement = select(PolicyVersion).order_by(col(PolicyVersion.effective_at).desc())
    return list((await session.exec(statement)).all())


async def get_policy(session: AsyncSession, version: str) -> PolicyVersion:
    policy = await session.get(PolicyVersion, version)
    if policy is None:
        raise PolicyNotFound(f"no policy version {version!r}; GET /v1/policies lists them")
    return policy


def _same(policy: PolicyVersion, payload: PolicyCreate) -> bool:
    return (
        policy.text_sha256 == payload.text_sha256
        and policy.url == payload.url
        and policy.summary == payload.summary
        and policy.material == payload.material
        and sorted(policy.affected_purposes) == sorted(payload.affected_purposes)
        and (payload.effective_at is None or payload.effective_at == policy.effective_at)
    )


async def publish(
    session: AsyncSession, catalogue: Catalogue, payload: PolicyCreate
) -> tuple[PolicyVersion, bool]:
    """Publish a version; returns it and whether it is new. Publishing the same content again
    changes nothing; other content under a published version id is a 409."""
    await _serialise_publishing(session)
    existing = await session.get(PolicyVersion, payload.version)
    if existing is not None:
        if _same(existing, payload):
            return existing, False
        raise PolicyVersionConflict(
            f"policy version {payload.version!r} is published with other content, and published "
            "versions never change; publish the new text under a new version id"
        )
    errors = [
        FieldError(loc=["body", "affected_purposes", i], msg=msg, type="invalid_purpose")
        for i, key in enumerate(payload.affected_purposes)
        if (
            msg := "unknown purpose"
            if key not in catalogue.purposes
            else "contract-based: does not rest on consent"
            if catalogue.purposes[key].legal_basis != "consent"
            else ""
        )
    ]
    if errors:
        raise InvalidInput(
            "affected_purposes must name consent-based purposes of the catalogue", errors=errors
        )
    now = utcnow()
    effective_at = payload.effective_at or now
    if effective_at < now - CLOCK_TOLERANCE:
        raise InvalidInput(
            "effective_at is in the past: a version cannot change what earlier decisions were",
            errors=[FieldError(loc=["body", "effective_at"], msg="in the past", type="past")],
        )
    effective_at = max(effective_at, now)  # "now" by a slow clock is now, never a moment ago
    latest = (await list_policies(session))[:1]
    if latest and effective_at <= latest[0].effective_at:
        raise InvalidInput(
            f"effective_at must be after that of the latest version, {latest[0].version!r} "
            f"({latest[0].effective_at.isoformat()})",
            errors=[FieldError(loc=["body", "effective_at"], msg="not after", type="order")],
        )
    policy = PolicyVersion(
        version=payload.version,
        effective_at=effective_at,
        published_at=now,
        text_sha256=payload.text_sha256 or "",
        text=payload.text,
        url=payload.url,
        summary=payload.summary,
        material=payload.material,
        affected_purposes=list(payload.affected_purposes),
    )
    session.add(policy)
    try:
        await session.flush()
    except IntegrityError:  # published concurrently
        raise PolicyVersionConflict(
            f"policy version {payload.version!r} was published concurrently; read it back"
        ) from None
    return policy, True
