"""The check through the ORM: a few indexed reads (the subject, the policy versions, its consents
for the pairs asked, and the OS state when a device is named), no cache. The routes use the same
reads made by one statement on the driver (``app.checks.fast``); this one is its reference, held
to it by the tests, and the decision code is shared."""

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

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
    unasked_applies,
)
from app.core.config import Settings
from app.core.types import utcnow
from app.models import Consent, PermissionObservation, Subject
from app.policies.service import load_policies
from app.subjects.age import AgeFacts, is_child

T = TypeVar("T")


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
    ready: Mapping[tuple[str, str], T] | None = None,
) -> list[Decision | T]:
    """Each pair's decision, in order; with ``ready``, a pair's entry there instead wherever
    its decision is ``decision.unasked`` (the check's written ones: ``router.Answers``)."""
    cooldown = timedelta(hours=settings.prompt_cooldown_hours)
    device = device_id is not None
    decisions: list[Decision | T] = []
    for pair in pairs:
        consent = consents.get(pair.key)
        observed = os.get(pair.key[0]) if os else None
        if ready is not None and unasked_applies(pair, consent, facts, observed, device):
            decisions.append(ready[pair.key])
            continue
        decisions.append(
            decide(
                pair,
                consent,
                subject=facts,
                policies=policies,
                at=now,
                os=observed,
                device=device,
                prompt_cooldown=cooldown,
            )
        )
    return decisions


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
