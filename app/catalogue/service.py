"""Keeps the database's copy of the catalogue in step with the data file, and answers which
policy version is current."""

from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue, Pair
from app.core.db import upsert
from app.core.errors import FieldError, InvalidInput
from app.core.types import utcnow
from app.models import BusinessFunction, FunctionNeed, PolicyVersion, Purpose, PurposeTarget, Target


async def sync_catalogue(session: AsyncSession, catalogue: Catalogue) -> None:
    """Upsert every entry of the file; idempotent, and safe when several processes start at once.

    Entries removed from the file stay in the database: consents and events refer to them.
    """
    file = catalogue.file
    await upsert(
        session,
        Target,
        [
            {
                "key": t.key,
                "kind": t.kind,
                "name": t.name,
                "sensitive": t.sensitive,
                "separate_consent": t.separate_consent,
                "required": t.required,
                "cites": t.cites,
            }
            for t in file.targets
        ],
        ["key"],
    )
    await upsert(
        session,
        Purpose,
        [
            {
                "key": p.key,
                "name": p.name,
                "legal_basis": p.legal_basis,
                "necessary": p.necessary,
                "separate_consent": p.separate_consent,
                "cites": p.cites,
            }
            for p in file.purposes
        ],
        ["key"],
    )
    await upsert(
        session,
        PurposeTarget,
        [{"purpose_key": p, "target_key": t} for (t, p) in catalogue.pairs],
        ["purpose_key", "target_key"],
        update=False,
    )
    await upsert(
        session,
        BusinessFunction,
        [{"key": f.key, "name": f.name, "cites": f.cites} for f in file.functions],
        ["key"],
    )
    await upsert(
        session,
        FunctionNeed,
        [
            {"function_key": f.key, "target_key": n.target, "purpose_key": n.purpose}
            for f in file.functions
            for n in f.needs
        ],
        ["function_key", "target_key", "purpose_key"],
        update=False,
    )
    # The policy version the catalogue was written from; published versions are never changed.
    await upsert(
        session,
        PolicyVersion,
        [
            {
                "version": file.policy.version,
                "effective_at": file.policy.effective_at,
                "published_at": file.policy.effective_at,
                "text_sha256": catalogue.policy_sha256,
                "summary": file.policy.summary,
                "material": False,
                "affected_purposes": [],
            }
        ],
        ["version"],
        update=False,
    )


async def current_policy_version(session: AsyncSession, at: datetime | None = None) -> str | None:
    """The newest version in effect at ``at`` (default: now)."""
    statement = (
        select(PolicyVersion.version)
        .where(col(PolicyVersion.effective_at) <= (at or utcnow()))
        .order_by(col(PolicyVersion.effective_at).desc())
        .limit(1)
    )
    return (await session.exec(statement)).first()


async def policy_version_exists(session: AsyncSession, version: str) -> bool:
    return await session.get(PolicyVersion, version) is not None


def resolve_pair(
    catalogue: Catalogue, target: str, purpose: str, loc: tuple[str | int, ...]
) -> Pair:
    """The catalogue pair, or a 422 that says which key is wrong and what would be right."""
    pair = catalogue.pairs.get((target, purpose))
    if pair is not None:
        return pair
    if target not in catalogue.targets:
        raise InvalidInput(
            f"unknown target {target!r}; GET /v1/catalogue lists the targets",
            errors=[FieldError(loc=[*loc, "target"], msg="unknown target", type="unknown_target")],
        )
    if purpose not in catalogue.purposes:
        raise InvalidInput(
            f"unknown purpose {purpose!r}; GET /v1/catalogue lists the purposes",
            errors=[
                FieldError(loc=[*loc, "purpose"], msg="unknown purpose", type="unknown_purpose")
            ],
        )
    allowed = ", ".join(catalogue.purposes[purpose].targets)
    raise InvalidInput(
        f"purpose {purpose!r} may not use target {target!r}; it may use: {allowed}",
        errors=[
            FieldError(
                loc=list(loc), msg="this purpose may not use this target", type="pair_not_allowed"
            )
        ],
    )
