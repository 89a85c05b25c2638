"""Erasing a subject's data (a deletion request) and cancelling an account.

Both, in the caller's transaction: every given consent is withdrawn (ledger events naming the
actor), the subject's attributes and OS observations are erased, and every recipient that may hold
data on the subject is told to delete it. Cancellation also closes the account for good.

What stays is the ledger and the guardian records, under the pseudonymous subject id: they are the
proof that what was processed before was lawful (PIPL art. 47 and GDPR art. 17(3)(e) keep such
records out of erasure), and hold no attribute of the person.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.consents.service import EventSpec, current_consents, record_events
from app.core.errors import SubjectNotFound
from app.core.security import Principal
from app.core.types import utcnow
from app.models import PermissionObservation, Subject
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
    now = utcnow()
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
