"""Audit queries: the ledger across subjects, who could lawfully be processed when, and counts."""

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import String, and_, case, func, or_, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.filters import EventFilter
from app.audit.schemas import LawfulSubject, StatsBucket
from app.catalogue.loader import Pair
from app.checks.decision import ConsentState, SubjectFacts, decide
from app.consents.events import event_public
from app.consents.schemas import EventPublic
from app.core.config import Settings
from app.core.errors import InvalidInput
from app.core.pagination import (
    Page,
    clamp_limit,
    cursor_instant,
    cursor_text,
    cursor_uuid,
    decode_cursor,
    encode_cursor,
)
from app.models import ConsentEvent, Subject
from app.policies.service import load_policies
from app.subjects.age import is_child

Order = Literal["oldest", "newest"]
Bucket = Literal["day", "week", "month"]


async def list_events(
    session: AsyncSession,
    filters: EventFilter,
    *,
    order: Order,
    limit: int | None,
    cursor: str | None,
) -> Page[EventPublic]:
    """Events across subjects, by time (ties broken by id), keyset-paginated either way."""
    size = clamp_limit(limit)
    recorded, ident = col(ConsentEvent.recorded_at), col(ConsentEvent.id)
    statement = select(ConsentEvent).where(*filters.conditions())
    if cursor is not None:
        position = decode_cursor(cursor, expect={"t": str, "id": str})
        at, after = cursor_instant(position["t"]), cursor_uuid(position["id"])
        if order == "oldest":
            statement = statement.where(or_(recorded > at, and_(recorded == at, ident > after)))
        else:
            statement = statement.where(or_(recorded < at, and_(recorded == at, ident < after)))
    if order == "oldest":
        statement = statement.order_by(recorded, ident)
    else:
        statement = statement.order_by(recorded.desc(), ident.desc())
    rows = list(await session.exec(statement.limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = (
        encode_cursor({"t": rows[-1].recorded_at.isoformat(), "id": str(rows[-1].id)})
        if more
        else None
    )
    return Page[EventPublic](items=[event_public(e) for e in rows], next_cursor=next_cursor)


async def lawful_subjects(
    session: AsyncSession,
    settings: Settings,
    pair: Pair,
    as_of: datetime,
    *,
    limit: int | None,
    cursor: str | None,
) -> Page[LawfulSubject]:
    """Every subject whose consent allowed ``pair`` at ``as_of``, by subject id, each with the
    event that made it lawful. The decision is the check's own, as of that instant."""
    if pair.necessary:
        raise InvalidInput(
            f"processing for {pair.purpose.key!r} is contract-based and necessary, not "
            "consent-based: every subject with an account may be processed for it"
        )
    size = clamp_limit(limit)
    after = cursor_text(decode_cursor(cursor, expect={"s": str})["s"]) if cursor else None
    latest = (
        select(ConsentEvent.subject_id, func.max(ConsentEvent.seq).label("seq"))
        .where(
            ConsentEvent.target_key == pair.target.key,
            ConsentEvent.purpose_key == pair.purpose.key,
            col(ConsentEvent.recorded_at) <= as_of,
        )
        .group_by(col(ConsentEvent.subject_id))
    )
    if after is not None:
        latest = latest.where(col(ConsentEvent.subject_id) > after)
    last = latest.subquery()
    statement = (
        select(ConsentEvent, Subject)
        .join(
            last,
            and_(
                col(ConsentEvent.subject_id) == last.c.subject_id,
                col(ConsentEvent.seq) == last.c.seq,
            ),
        )
        .join(Subject, col(Subject.id) == col(ConsentEvent.subject_id))
        .order_by(col(ConsentEvent.subject_id))
        .limit(size + 1)
    )
    rows = list(await session.exec(statement))
    more = len(rows) > size
    rows = rows[:size]
    policies = await load_policies(session)
    items = []
    for event, subject in rows:
        since = subject.guardian_verified_at
        facts = SubjectFacts(
            child=is_child(subject, settings, as_of),
            guardian_since=since if since is not None and since <= as_of else None,
        )
        consent = ConsentState(
            event.state, event.id, event.policy_version, event.recorded_at, event.expires_at
        )
        decision = decide(pair, consent, subject=facts, policies=policies, at=as_of)
        if decision.allowed:
            items.append(
                LawfulSubject(
                    subject_id=event.subject_id,
                    event_id=event.id,
                    policy_version=event.policy_version,
                    recorded_at=event.recorded_at,
                    expires_at=event.expires_at,
                )
            )
    next_cursor = encode_cursor({"s": rows[-1][0].subject_id}) if more else None
    return Page[LawfulSubject](items=items, next_cursor=next_cursor)


def _bucket_expression(dialect: str, bucket: Bucket) -> Any:
    recorded = col(ConsentEvent.recorded_at)
    if dialect == "postgresql":
        return func.to_char(
            func.date_trunc(bucket, func.timezone("UTC", recorded)), text("'YYYY-MM-DD'")
        )
    # SQLite keeps instants as UTC text, "YYYY-MM-DD HH:MM:SS.ffffff".
    day = func.substr(recorded, 1, 10)
    if bucket == "day":
        return day
    if bucket == "month":
        return func.substr(recorded, 1, 7, type_=String).concat("-01")
    return func.date(day, "weekday 0", "-6 days")  # the Monday that starts the week


async def stats(session: AsyncSession, filters: EventFilter, bucket: Bucket) -> list[StatsBucket]:
    """Counts per bucket (UTC; weeks start on Monday) of consents given for the first time or
    again after a refusal or withdrawal, renewed, refused, withdrawn and revoked."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    start = _bucket_expression(dialect, bucket).label("start")
    kind = case(
        (
            and_(col(ConsentEvent.state) == "given", col(ConsentEvent.reason) == "renewal"),
            "renewed",
        ),
        else_=col(ConsentEvent.state),
    ).label("kind")
    statement = (
        select(start, kind, func.count().label("n"))
        .where(*filters.conditions())
        .group_by(start, kind)
        .order_by(start)
    )
    buckets: dict[str, StatsBucket] = {}
    for day, event_kind, n in await session.exec(statement):
        key = str(day)[:10]
        entry = buckets.setdefault(key, StatsBucket(start=key))
        if event_kind in StatsBucket.model_fields and event_kind != "start":
            setattr(entry, event_kind, getattr(entry, event_kind) + n)
    return list(buckets.values())
