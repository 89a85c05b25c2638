"""The check: the hot path. Two indexed reads (the subject, its consents for the pairs asked),
no cache, so a withdrawal committed before the check began is always seen."""

from collections.abc import Sequence

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Pair
from app.checks.decision import ConsentState, Decision, decide
from app.core.types import utcnow
from app.models import Consent, Subject


async def check(session: AsyncSession, subject_id: str, pairs: Sequence[Pair]) -> list[Decision]:
    status = (await session.exec(select(Subject.status).where(Subject.id == subject_id))).first()
    targets = {p.target.key for p in pairs}
    purposes = {p.purpose.key for p in pairs}
    rows = await session.exec(
        select(Consent).where(
            Consent.subject_id == subject_id,
            col(Consent.target_key).in_(targets),
            col(Consent.purpose_key).in_(purposes),
        )
    )
    consents = {
        (r.target_key, r.purpose_key): ConsentState(
            r.state, r.event_id, r.policy_version, r.recorded_at, r.expires_at
        )
        for r in rows
    }
    now = utcnow()
    cancelled = status == "cancelled"
    return [
        decide(p, consents.get((p.target.key, p.purpose.key)), cancelled=cancelled, at=now)
        for p in pairs
    ]
