"""Writing webhook messages: in the caller's transaction, beside the ledger change they announce,
so a change that commits is announced and one that rolls back is not.

What a recipient is told:
- ``consent.withdrawn`` / ``consent.revoked``: stop processing for that (target, purpose), if it
  relies on the pair;
- ``subject.erasure_requested``: delete what you hold on the subject (a completed deletion
  request, an account cancellation), if it relies on any pair the subject ever consented to or on
  a purpose necessary for the contract.
"""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.consents.ledger import NewEvent
from app.core.types import isoformat_z, utcnow, uuid7
from app.models import ConsentEvent, Recipient, WebhookMessage

STOP_TYPES = {"withdrawn": "consent.withdrawn", "revoked": "consent.revoked"}
ERASURE = "subject.erasure_requested"
EVENT_TYPES = (*STOP_TYPES.values(), ERASURE)


class Relying(Protocol):
    """A recipient as the outbox needs it: a Recipient row, or the consent writer's row."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def targets(self) -> list[str] | None: ...
    @property
    def purposes(self) -> list[str] | None: ...


def relies_on(recipient: Relying, target: str, purpose: str) -> bool:
    return (recipient.targets is None or target in recipient.targets) and (
        recipient.purposes is None or purpose in recipient.purposes
    )


async def recipients(session: AsyncSession) -> list[Recipient]:
    """All of them, disabled ones too: their messages wait until they are enabled again (a
    processor paused for maintenance still has to be told what to stop and delete)."""
    return list((await session.exec(select(Recipient).order_by(col(Recipient.id)))).all())


def _message(
    recipient: Relying, subject_id: str, type_: str, data: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """A new message's row, every column (the consent writer stores it without the ORM)."""
    return {
        "id": uuid7(),
        "recipient_id": recipient.id,
        "subject_id": subject_id,
        "type": type_,
        "payload": {"type": type_, "timestamp": isoformat_z(now), "data": data},
        "created_at": now,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "retry_from": now,
        "claimed_by": None,
        "claimed_until": None,
        "delivered_at": None,
        "last_error": None,
    }


def stop_messages(
    events: Sequence[NewEvent], recipients: Sequence[Relying]
) -> list[dict[str, Any]]:
    """One message (its row) per (withdrawal or revocation, recipient relying on its pair)."""
    now = utcnow()
    return [
        _message(
            recipient,
            event.subject_id,
            STOP_TYPES[event.state],
            {
                "subject_id": event.subject_id,
                "target": event.target_key,
                "purpose": event.purpose_key,
                "state": event.state,
                "previous_state": event.previous_state,
                "event_id": str(event.id),
                "seq": event.seq,
                "recorded_at": isoformat_z(event.recorded_at),
                "source": event.source,
            },
            now,
        )
        for event in events
        if event.state in STOP_TYPES
        for recipient in recipients
        if relies_on(recipient, event.target_key, event.purpose_key)
    ]


async def announce_events(session: AsyncSession, events: Sequence[NewEvent]) -> int:
    """The stop messages of ``events``, written in the caller's transaction."""
    if not any(e.state in STOP_TYPES for e in events):
        return 0
    messages = [WebhookMessage(**row) for row in stop_messages(events, await recipients(session))]
    session.add_all(messages)
    await session.flush()
    return len(messages)


async def consented_pairs(session: AsyncSession, subject_id: str) -> set[tuple[str, str]]:
    """Every (target, purpose) the subject ever gave: what a recipient may have received."""
    statement = (
        select(ConsentEvent.target_key, ConsentEvent.purpose_key)
        .where(ConsentEvent.subject_id == subject_id, ConsentEvent.state == "given")
        .distinct()
    )
    return {(t, p) for t, p in await session.exec(statement)}


async def announce_erasure(
    session: AsyncSession,
    catalogue: Catalogue,
    subject_id: str,
    *,
    reason: str,
    request_id: str | None,
) -> int:
    """Tell every recipient that may hold data on the subject to delete it."""
    necessary = {key for key, pair in catalogue.pairs.items() if pair.necessary}
    pairs = (await consented_pairs(session, subject_id)) | necessary
    now = utcnow()
    data = {
        "subject_id": subject_id,
        "reason": reason,
        "request_id": request_id,
        "requested_at": isoformat_z(now),
    }
    messages = [
        WebhookMessage(**_message(recipient, subject_id, ERASURE, data, now))
        for recipient in await recipients(session)
        if any(relies_on(recipient, target, purpose) for target, purpose in pairs)
    ]
    session.add_all(messages)
    await session.flush()
    return len(messages)
