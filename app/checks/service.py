"""The check through the ORM: a few indexed reads (the subject, the policy versions, its consents
for the pairs asked, and the OS state when a device is named), no cache. The routes use the same
reads made by one statement on the driver (``app.checks.fast``); this one is its reference, held
to it by the tests, and the decision code is shared."""

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Pair
from app.checks.decision import (
    ConsentState,
    Decision,
    OsState,
    Policies,
    SubjectFacts,
    decide,
)
from app.core.config import Settings
from app.core.types import utcnow
from app.models import Consent, PermissionObservation, Subject
from app.policies.service import load_policies
from app.subjects.age import AgeFacts, is_child


async def check(
    session: AsyncSession,
    settings: Settings,
    subject_id: str,
    pairs: Sequence[Pair],
    device_id: str | None = None,
) -> list[Decision]:
    now = utcnow()
    subject = await session.get(Subject, subject_id)
    facts = subject_facts(subject, settings, now)
    policies = await load_policies(session)
    targets = {p.target.key for p in pairs}
    rows = await session.exec(
        select(Consent).where(
            Consent.subject_id == subject_id,
            col(Consent.target_key).in_(targets),
            col(Consent.purpose_key).in_({p.purpose.key for p in pairs}),
        )
    )
    consents = {
        (r.target_key, r.purpose_key): ConsentState(
            r.state, r.event_id, r.policy_version, r.recorded_at, r.expires_at
        )
        for r in rows
    }
    os: dict[str, OsState] = {}
    if device_id is not None and any(p.permission for p in pairs):
        observations = await session.exec(
            select(PermissionObservation).where(
                PermissionObservation.subject_id == subject_id,
                PermissionObservation.device_id == device_id,
                col(PermissionObservation.target_key).in_(targets),
            )
        )
        os = {o.target_key: OsState(o.state, o.last_denied_at) for o in observations}
    return decide_all(settings, pairs, consents, os, facts, policies, now, device_id)


def decide_all(
    settings: Settings,
    pairs: Sequence[Pair],
    consents: dict[tuple[str, str], ConsentState],
    os: dict[str, OsState],
    facts: SubjectFacts,
    policies: Policies,
    now: datetime,
    device_id: str | None,
) -> list[Decision]:
    cooldown = timedelta(hours=settings.prompt_cooldown_hours)
    device = device_id is not None
    return [
        decide(
            p,
            consents.get(p.key),
            subject=facts,
            policies=policies,
            at=now,
            os=os.get(p.key[0]) if os else None,
            device=device,
            prompt_cooldown=cooldown,
        )
        for p in pairs
    ]


class CheckedSubject(AgeFacts, Protocol):
    @property
    def status(self) -> str: ...
    @property
    def guardian_verified_at(self) -> datetime | None: ...


def subject_facts(
    subject: CheckedSubject | None, settings: Settings, now: datetime
) -> SubjectFacts:
    """An unknown subject is an adult with nothing recorded: every optional pair is not_asked."""
    if subject is None:
        return SubjectFacts()
    return SubjectFacts(
        cancelled=subject.status == "cancelled",
        child=is_child(subject, settings, now),
        guardian_since=subject.guardian_verified_at,
    )
