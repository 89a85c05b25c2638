"""Subjects: created on first write, read or 404, and locked as the head of their ledger."""

from typing import Protocol

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import upsert
from app.core.errors import Conflict, FieldError, InvalidInput, SubjectNotFound
from app.core.security import Principal
from app.core.types import utcnow
from app.models import GuardianConsent, Subject
from app.subjects.schemas import GuardianConsentCreate, SubjectPut


class SubjectCancelled(Conflict):
    slug = "subject-cancelled"
    title = "Account cancelled"


class _Status(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...


def refuse_if_cancelled(subject: _Status, what: str) -> None:
    if subject.status == "cancelled":
        raise SubjectCancelled(f"subject {subject.id!r} cancelled the account; {what}")


async def get_subject(session: AsyncSession, subject_id: str) -> Subject:
    subject = await session.get(Subject, subject_id)
    if subject is None:
        raise SubjectNotFound(f"no subject {subject_id!r}")
    return subject


async def lock_subject(session: AsyncSession, subject_id: str) -> Subject:
    """Create the subject if it does not exist, then lock its row for this transaction.

    Every writer of what a consent change rests on (the ledger, the attributes, guardians, the
    account's status) goes through here, so writers to one subject queue up on this row
    (PostgreSQL's row lock; on SQLite the transaction already holds the write lock). The lock is
    taken by writing the row (``updated_at``), so that it is a new version of the row even for a
    writer that changes nothing else on it: the consent writer (``app.consents.fast``) writes only
    if the row is still the version it read.
    """
    now = utcnow()
    await upsert(
        session,
        Subject,
        [{"id": subject_id, "created_at": now, "updated_at": now}],
        ["id"],
        update_columns=["updated_at"],
    )
    statement = (
        select(Subject)
        .where(Subject.id == subject_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.exec(statement)).one()


async def put_subject(
    session: AsyncSession, subject_id: str, payload: SubjectPut
) -> tuple[Subject, bool]:
    """Create or update; returns the subject and whether it was created."""
    created = await session.get(Subject, subject_id) is None
    subject = await lock_subject(session, subject_id)
    refuse_if_cancelled(subject, "its attributes cannot change")
    subject.jurisdiction = payload.jurisdiction
    subject.birth_year = payload.birth_year
    subject.birth_date = payload.birth_date
    subject.age = payload.age  # an age is stated as of now, every time it is sent
    subject.age_stated_at = utcnow() if payload.age is not None else None
    subject.updated_at = utcnow()
    session.add(subject)
    await session.flush()
    return subject, created


async def list_guardians(session: AsyncSession, subject_id: str) -> list[GuardianConsent]:
    await get_subject(session, subject_id)
    statement = (
        select(GuardianConsent)
        .where(GuardianConsent.subject_id == subject_id)
        .order_by(col(GuardianConsent.recorded_at))
    )
    return list((await session.exec(statement)).all())


async def record_guardian(
    session: AsyncSession, principal: Principal, subject_id: str, payload: GuardianConsentCreate
) -> GuardianConsent:
    """Record a guardian's verified consent; from now on the child's changes are theirs."""
    subject = await lock_subject(session, subject_id)
    refuse_if_cancelled(subject, "no guardian can be recorded")
    now = utcnow()
    verified_at = payload.verified_at or now
    if verified_at > now:
        raise InvalidInput(
            "verified_at is in the future: record a verification once it happened",
            errors=[FieldError(loc=["body", "verified_at"], msg="in the future", type="future")],
        )
    guardian = GuardianConsent(
        subject_id=subject_id,
        **payload.model_dump(exclude={"verified_at"}),
        verified_at=verified_at,
        recorded_at=now,
        recorded_by=f"{principal.actor}:{principal.name}",
    )
    session.add(guardian)
    if subject.guardian_verified_at is None:
        subject.guardian_verified_at = now
        session.add(subject)
    await session.flush()
    return guardian
