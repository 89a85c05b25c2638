"""Subjects: created on first write, read or 404, and locked as the head of their ledger."""

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import upsert
from app.core.errors import NotFound
from app.core.types import utcnow
from app.models import Subject
from app.subjects.schemas import SubjectPut


class SubjectNotFound(NotFound):
    slug = "subject-not-found"
    title = "Subject not found"


async def get_subject(session: AsyncSession, subject_id: str) -> Subject:
    subject = await session.get(Subject, subject_id)
    if subject is None:
        raise SubjectNotFound(f"no subject {subject_id!r}")
    return subject


async def lock_subject(session: AsyncSession, subject_id: str) -> Subject:
    """Create the subject if it does not exist, then lock its row for this transaction.

    Every write to a subject's ledger goes through here, so writers to one subject queue up on
    this row (PostgreSQL ``FOR UPDATE``; on SQLite the transaction already holds the write lock).
    """
    now = utcnow()
    await upsert(
        session,
        Subject,
        [{"id": subject_id, "created_at": now, "updated_at": now}],
        ["id"],
        update=False,
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
    subject.jurisdiction = payload.jurisdiction
    subject.birth_year = payload.birth_year
    subject.updated_at = utcnow()
    session.add(subject)
    await session.flush()
    return subject, created
