"""Erasing a subject's data (a deletion request) and cancelling an account.

Both, in the caller's transaction: every given consent is withdrawn (ledger events naming the
actor), the subject's attributes, OS observations and the exports attached to its access requests
are erased, and every recipient that may hold data on the subject is told to delete it.
Cancellation also closes the account for good. Of a child's age only the day they stop being a
child is kept, so that an erased child is never taken for an adult.

What stays is the ledger, the guardian records and the requests' log, under the pseudonymous
subject id: the proof that what was processed before was lawful and that the subject's rights
were answered (README: "Why the ledger keeps the subject id").
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.consents.service import EventSpec, current_consents, record_events
from app.core.config import Settings
from app.core.errors import SubjectNotFound
from app.core.security import Principal
from app.core.types import utcnow
from app.models import DataSubjectRequest, PermissionObservation, Subject
from app.subjects.age import child_until
from app.subjects.service import SubjectCancelled, lock_subject
from app.webhooks.outbox import announce_erasure


@dataclass(frozen=True)
class Erasure:
    subject: Subject
    withdrawn: int  # consents withdrawn
    observations: int  # OS observations erased
    notified: int  # recipients told to delete
    at: datetime


async def erase_subject(
    session: AsyncSession,
    catalogue: Catalogue,
    settings: Settings,
    principal: Principal,
    subject_id: str,
    *,
    reason: str,
    source: str,
    request_id: str | None = None,
    cancel: bool = False,
) -> Erasure:
    if await session.get(Subject, subject_id) is None:
        raise SubjectNotFound(f"no subject {subject_id!r}")
    subject = await lock_subject(session, subject_id)
    if cancel and subject.status == "cancelled":
        raise SubjectCancelled(f"subject {subject_id!r} cancelled the account already")
    current = await current_consents(session, subject_id)
    evidence = {"recorded_by": principal.issued_by} if principal.issued_by else {}
    specs = [
        EventSpec(
            target=row.target_key,
            purpose=row.purpose_key,
            state="withdrawn",
            expires_at=None,
            evidence=evidence,
            actor=principal.actor,
            actor_id=principal.name,
            source=source,
            policy_version=row.policy_version,
            reason=reason,
        )
        for row in current.values()
        if row.state == "given"
    ]
    if specs:
        await record_events(session, subject, current, specs)
    removed = await session.exec(
        delete(PermissionObservation).where(col(PermissionObservation.subject_id) == subject_id)
    )
    # Copies of the data in access requests' exports go too; the requests themselves stay, as
    # the record of how the subject's rights were answered.
    await session.exec(
        update(DataSubjectRequest)
        .where(col(DataSubjectRequest.subject_id) == subject_id)
        .values(export=None)
    )
    now = utcnow()
    # A child stays a child: what is kept is the day they surely are not one any more.
    subject.child_until = child_until(subject, settings, now)
    subject.birth_year = subject.birth_date = subject.age = subject.age_stated_at = None
    subject.erased_at = subject.updated_at = now
    if cancel:
        subject.status, subject.cancelled_at = "cancelled", now
    session.add(subject)
    await session.flush()
    notified = await announce_erasure(
        session,
        catalogue,
        subject_id,
        reason="account_cancellation" if cancel else "deletion_request",
        request_id=request_id,
    )
    return Erasure(subject, len(specs), removed.rowcount, notified, now)
