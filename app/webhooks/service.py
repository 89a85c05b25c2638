"""Recipients: who is told, where, about what; and their deliveries."""

import ipaddress
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.core.config import Settings
from app.core.errors import Conflict, FieldError, InvalidInput, NotFound
from app.core.security import Principal
from app.core.types import utcnow
from app.models import Recipient, WebhookAttempt, WebhookMessage
from app.webhooks.schemas import RecipientCreate, RecipientUpdate
from app.webhooks.signing import new_secret

MAX_URL = 2048  # the column's size


class RecipientNotFound(NotFound):
    slug = "recipient-not-found"
    title = "Recipient not found"


class DeliveryNotFound(NotFound):
    slug = "delivery-not-found"
    title = "Delivery not found"


class NameTaken(Conflict):
    slug = "recipient-name-taken"
    title = "Recipient name taken"


class NotReplayable(Conflict):
    slug = "delivery-not-replayable"
    title = "Delivery still pending"


def _invalid(loc: str, message: str, type_: str = "value_error") -> InvalidInput:
    return InvalidInput(message, errors=[FieldError(loc=["body", loc], msg=message, type=type_)])


def _check_url(settings: Settings, url: str) -> str:
    """https, or http to a loopback address (a receiver on the same host), or http anywhere if
    the operator allowed it. No credentials or fragments in the URL."""
    if len(url) > MAX_URL:
        raise _invalid("url", f"longer than {MAX_URL} characters (once percent-encoded)")
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise _invalid("url", "put no credentials in the URL: messages are signed instead")
    if parts.fragment:
        raise _invalid("url", "a webhook URL has no #fragment")
    if parts.scheme == "http" and not settings.webhook_allow_http:
        host = (parts.hostname or "").strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise _invalid(
                "url",
                "use https: messages name subjects (plain http only to a loopback address, "
                "or with CONSENT_LEDGER_WEBHOOK_ALLOW_HTTP=true)",
            )
    return url


def _check_keys(
    catalogue: Catalogue, purposes: list[str] | None, targets: list[str] | None
) -> None:
    for loc, keys, known in (
        ("purposes", purposes, catalogue.purposes),
        ("targets", targets, catalogue.targets),
    ):
        unknown = sorted({k for k in keys or () if k not in known})
        if unknown:
            raise _invalid(
                loc, f"unknown {loc}: {', '.join(unknown)}; GET /v1/catalogue lists them"
            )


async def create_recipient(
    session: AsyncSession,
    settings: Settings,
    catalogue: Catalogue,
    principal: Principal,
    payload: RecipientCreate,
) -> Recipient:
    _check_keys(catalogue, payload.purposes, payload.targets)
    now = utcnow()
    recipient = Recipient(
        name=payload.name,
        kind=payload.kind,
        url=_check_url(settings, str(payload.url)),
        secret=new_secret(),
        purposes=_unique(payload.purposes),
        targets=_unique(payload.targets),
        created_at=now,
        created_by=f"{principal.actor}:{principal.name}",
        updated_at=now,
    )
    session.add(recipient)
    try:
        await session.flush()
    except IntegrityError:
        raise NameTaken(f"a recipient is named {payload.name!r} already") from None
    return recipient


def _unique(keys: list[str] | None) -> list[str] | None:
    return sorted(set(keys)) if keys is not None else None


async def get_recipient(
    session: AsyncSession, recipient_id: uuid.UUID, *, lock: bool = False
) -> Recipient:
    statement = select(Recipient).where(Recipient.id == recipient_id)
    if lock:
        statement = statement.with_for_update()
    recipient = (await session.exec(statement)).first()
    if recipient is None:
        raise RecipientNotFound(f"no recipient {recipient_id}")
    return recipient


async def update_recipient(
    session: AsyncSession,
    settings: Settings,
    catalogue: Catalogue,
    recipient_id: uuid.UUID,
    payload: RecipientUpdate,
) -> Recipient:
    recipient = await get_recipient(session, recipient_id, lock=True)
    fields = payload.model_fields_set
    for name in ("kind", "url"):
        if name in fields and getattr(payload, name) is None:
            raise _invalid(name, "cannot be null")
    _check_keys(catalogue, payload.purposes, payload.targets)
    if payload.kind is not None:
        recipient.kind = payload.kind
    if payload.url is not None:
        recipient.url = _check_url(settings, str(payload.url))
    if "purposes" in fields:
        recipient.purposes = _unique(payload.purposes)
    if "targets" in fields:
        recipient.targets = _unique(payload.targets)
    recipient.updated_at = utcnow()
    session.add(recipient)
    await session.flush()
    return recipient


async def rotate_secret(session: AsyncSession, recipient_id: uuid.UUID) -> Recipient:
    recipient = await get_recipient(session, recipient_id, lock=True)
    recipient.secret, recipient.updated_at = new_secret(), utcnow()
    session.add(recipient)
    await session.flush()
    return recipient


async def disable_recipient(session: AsyncSession, recipient_id: uuid.UUID) -> Recipient:
    """No new messages; pending ones wait (and are delivered if it is enabled again)."""
    recipient = await get_recipient(session, recipient_id, lock=True)
    if recipient.disabled_at is None:
        recipient.disabled_at = recipient.updated_at = utcnow()
        session.add(recipient)
        await session.flush()
    return recipient


async def enable_recipient(session: AsyncSession, recipient_id: uuid.UUID) -> Recipient:
    recipient = await get_recipient(session, recipient_id, lock=True)
    if recipient.disabled_at is not None:
        recipient.disabled_at, recipient.updated_at = None, utcnow()
        session.add(recipient)
        await session.flush()
    return recipient


async def list_recipients(
    session: AsyncSession, *, limit: int, after: uuid.UUID | None
) -> Sequence[Recipient]:
    statement = select(Recipient).order_by(col(Recipient.id)).limit(limit)
    if after is not None:
        statement = statement.where(col(Recipient.id) > after)
    return (await session.exec(statement)).all()


async def list_deliveries(
    session: AsyncSession,
    recipient_id: uuid.UUID,
    *,
    status: str | None,
    subject_id: str | None,
    limit: int,
    after: uuid.UUID | None,
) -> Sequence[WebhookMessage]:
    await get_recipient(session, recipient_id)
    statement = (
        select(WebhookMessage)
        .where(WebhookMessage.recipient_id == recipient_id)
        .order_by(col(WebhookMessage.id))
        .limit(limit)
    )
    if status is not None:
        statement = statement.where(WebhookMessage.status == status)
    if subject_id is not None:
        statement = statement.where(WebhookMessage.subject_id == subject_id)
    if after is not None:
        statement = statement.where(col(WebhookMessage.id) > after)
    return (await session.exec(statement)).all()


async def list_attempts(
    session: AsyncSession,
    recipient_id: uuid.UUID,
    *,
    message_id: uuid.UUID | None,
    limit: int,
    after: uuid.UUID | None,
) -> Sequence[WebhookAttempt]:
    await get_recipient(session, recipient_id)
    statement = (
        select(WebhookAttempt)
        .where(WebhookAttempt.recipient_id == recipient_id)
        .order_by(col(WebhookAttempt.id))
        .limit(limit)
    )
    if message_id is not None:
        statement = statement.where(WebhookAttempt.message_id == message_id)
    if after is not None:
        statement = statement.where(col(WebhookAttempt.id) > after)
    return (await session.exec(statement)).all()


async def replay(
    session: AsyncSession, recipient_id: uuid.UUID, message_id: uuid.UUID
) -> WebhookMessage:
    """Send a failed (or delivered) message again, now, with a fresh retry window; same
    ``webhook-id``, so a receiver that has it already can tell."""
    statement = (
        select(WebhookMessage)
        .where(WebhookMessage.id == message_id, WebhookMessage.recipient_id == recipient_id)
        .with_for_update()
    )
    message = (await session.exec(statement)).first()
    if message is None:
        await get_recipient(session, recipient_id)
        raise DeliveryNotFound(f"recipient {recipient_id} has no delivery {message_id}")
    if message.status == "pending":
        raise NotReplayable(
            f"delivery {message_id} is pending: it is retried on its own "
            f"(next attempt at {message.next_attempt_at.isoformat()})"
        )
    now = utcnow()
    message.status, message.next_attempt_at, message.retry_from = "pending", now, now
    message.claimed_by = message.claimed_until = message.delivered_at = None
    session.add(message)
    await session.flush()
    return message
