"""Reading a subject's ledger."""

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.consents.schemas import EventPublic
from app.core.pagination import Page, clamp_limit, decode_cursor, encode_cursor
from app.models import ConsentEvent
from app.subjects.service import get_subject


def event_public(event: ConsentEvent) -> EventPublic:
    return EventPublic(
        id=event.id,
        subject_id=event.subject_id,
        seq=event.seq,
        target=event.target_key,
        purpose=event.purpose_key,
        state=event.state,
        previous_state=event.previous_state,
        actor=event.actor,
        actor_id=event.actor_id,
        source=event.source,
        policy_version=event.policy_version,
        recorded_at=event.recorded_at,
        expires_at=event.expires_at,
        evidence=event.evidence,
        app_version=event.app_version,
        locale=event.locale,
        reason=event.reason,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


async def list_events(
    session: AsyncSession, subject_id: str, *, limit: int | None, cursor: str | None
) -> Page[EventPublic]:
    await get_subject(session, subject_id)
    size = clamp_limit(limit)
    after = decode_cursor(cursor, expect={"seq": int})["seq"] if cursor else 0
    rows = list(
        await session.exec(
            select(ConsentEvent)
            .where(ConsentEvent.subject_id == subject_id, col(ConsentEvent.seq) > after)
            .order_by(col(ConsentEvent.seq))
            .limit(size + 1)
        )
    )
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = encode_cursor({"seq": rows[-1].seq}) if more else None
    return Page[EventPublic](items=[event_public(e) for e in rows], next_cursor=next_cursor)
