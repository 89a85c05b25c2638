"""Delivering the outbox: at least once, never by two workers at the same time.

A worker *claims* a batch of due messages in one short transaction (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``, so workers take different rows without waiting; SQLite: the single write lock), marking
each with its token and a lease. It then posts them, outside any transaction, and records the
round's outcomes in one transaction, once its last post has ended, each only if its claim still
holds. A worker that dies mid-round leaves its claims to lapse; the lease is longer than a round
may take, so a live worker's message is never taken over, and a dead worker's are delivered again
by the next one (the whole round's, those that had been answered too): nothing is lost, and a
receiver that saw the first attempt deduplicates on ``webhook-id``.
"""

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import Select

from app import __version__
from app.core.config import Settings
from app.core.db import Database
from app.core.types import utcnow, uuid7
from app.models import Recipient, WebhookAttempt, WebhookMessage
from app.webhooks.signing import sign

logger = logging.getLogger("consent_ledger.webhooks")

BATCH = 20
ERROR_TEXT = 500  # characters of a receiver's answer kept with a failed attempt


def body_of(message: WebhookMessage) -> bytes:
    return json.dumps(message.payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int
    at: datetime  # when the attempt ended

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """Exponential, doubling from the first retry's delay, capped, with ±10% jitter so that
    messages that failed together do not all come back together."""
    base = settings.webhook_retry_seconds * 2 ** min(attempts - 1, 40)
    delay = min(base, settings.webhook_retry_max_delay_seconds)
    return timedelta(seconds=delay * random.uniform(0.9, 1.1))  # noqa: S311 (not for secrecy)


class Deliverer:
    """One delivery worker. ``run()`` until cancelled; ``deliver_due()`` for one round."""

    def __init__(
        self, settings: Settings, database: Database, client: httpx.AsyncClient | None = None
    ) -> None:
        self.settings = settings
        self.database = database
        self.token = uuid7()
        # Longer than any delivery can take, so a live worker keeps its claim to the end.
        self.lease = timedelta(seconds=2 * settings.webhook_timeout_seconds + 1)
        self._client = client or httpx.AsyncClient(
            timeout=settings.webhook_timeout_seconds,  # each step; deliver_due bounds the whole
            follow_redirects=False,
            headers={"user-agent": f"consent-ledger/{__version__}"},
        )
        self._owns_client = client is None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a round under way is finished first."""
        while not stop.is_set():
            try:
                delivered = await self.deliver_due()
            except Exception:
                logger.exception("delivering webhooks failed; will retry")
                delivered = 0
            if delivered < BATCH:  # a full batch: there may be more waiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.webhook_poll_seconds)

    async def deliver_due(self) -> int:
        """Claim the due messages (up to a batch), post them concurrently, record the outcomes.
        Returns how many were attempted."""
        claimed = await self._claim()
        if not claimed:
            return 0
        # Every post of the round is over by this deadline, well inside the claim's lease,
        # however slowly a receiver answers.
        deadline = asyncio.get_running_loop().time() + self.settings.webhook_timeout_seconds
        outcomes = await asyncio.gather(*(self._post(m, r, deadline) for m, r in claimed))
        try:
            await self._record(claimed, outcomes)
        except Exception:  # e.g. the database went away
            logger.exception(
                "outcomes not recorded of messages %s; they are sent again once their claims lapse",
                ", ".join(str(message.id) for message, _recipient in claimed),
            )
        return len(claimed)

    @staticmethod
    def _due(now: datetime, recipient_id: uuid.UUID) -> Select[WebhookMessage, Recipient]:
        """One enabled recipient's due messages, oldest first: a range of its index read in
        order, which stops at the limit. A paused recipient's backlog is never read, and one
        that comes back is taken a batch at a time."""
        return (
            select(WebhookMessage, Recipient)
            .join(Recipient, col(Recipient.id) == col(WebhookMessage.recipient_id))
            .where(
                col(WebhookMessage.recipient_id) == recipient_id,
                col(WebhookMessage.status) == "pending",
                col(WebhookMessage.next_attempt_at) <= now,
                col(WebhookMessage.claimed_until).is_(None)
                | (col(WebhookMessage.claimed_until) < now),
                col(Recipient.disabled_at).is_(None),  # not disabled since it was read
            )
            .order_by(col(WebhookMessage.next_attempt_at))
        )

    async def _claim(self) -> list[tuple[WebhookMessage, Recipient]]:
        # A look without the write lock first: idle polling must not queue behind writers.
        async with self.database.read_sessions() as session, session.begin():
            enabled = (
                await session.exec(select(Recipient.id).where(col(Recipient.disabled_at).is_(None)))
            ).all()
            now = utcnow()
            waiting = [
                recipient_id
                for recipient_id in enabled
                if (await session.exec(self._due(now, recipient_id).limit(1))).first() is not None
            ]
        if not waiting:
            return []
        async with self.database.write_sessions() as session, session.begin():
            # Leases are set and compared on one clock (the database's), read once the write
            # lock is held, so neither waiting for the lock nor another host's clock shortens one.
            now = await _database_now(session)
            candidates: list[tuple[WebhookMessage, Recipient]] = []
            for recipient_id in waiting:
                statement = (
                    self._due(now, recipient_id)
                    .limit(BATCH)
                    .with_for_update(of=WebhookMessage, skip_locked=True)
                )
                candidates.extend((await session.exec(statement)).all())
            # The oldest of them, a batch in all; the others are left as they were (their row
            # locks end with this transaction).
            candidates.sort(key=lambda pair: pair[0].next_attempt_at)
            claimed = candidates[:BATCH]
            until = now + self.lease
            for message, _recipient in claimed:
                message.claimed_by, message.claimed_until = self.token, until
                session.add(message)
        return [(m, r) for m, r in claimed]

    async def _post(
        self, message: WebhookMessage, recipient: Recipient, deadline: float
    ) -> Outcome:
        """Never raises (but for a cancel): whatever goes wrong is the attempt's outcome, so one
        message cannot keep its round's others from being recorded."""
        started = time.perf_counter()
        status, error = None, None
        try:
            body = body_of(message)
            message_id, timestamp = str(message.id), int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(recipient.secret, message_id, timestamp, body),
            }
            async with (
                asyncio.timeout_at(deadline),
                # Only the status matters; the answer's body is never read nor kept.
                self._client.stream("POST", recipient.url, content=body, headers=headers) as answer,
            ):
                status = answer.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_seconds:g} s"
        except Exception as exc:  # anything a URL, a connection, a receiver or a message can do
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Outcome(status, error, _ms_since(started), utcnow())

    async def _record(
        self, claimed: list[tuple[WebhookMessage, Recipient]], outcomes: list[Outcome]
    ) -> None:
        """The round's outcomes, in one transaction (one turn of SQLite's write lock, not one per
        message): an attempt each, and each message's new state if its claim still holds."""
        recorded: list[tuple[WebhookMessage, Recipient, Outcome, str, bool]] = []
        async with self.database.write_sessions() as session, session.begin():
            for (message, recipient), outcome in zip(claimed, outcomes, strict=True):
                result, values = self._next_state(message, outcome)
                session.add(
                    WebhookAttempt(
                        message_id=message.id,
                        recipient_id=recipient.id,
                        attempted_at=outcome.at,
                        duration_ms=outcome.duration_ms,
                        status_code=outcome.status_code,
                        outcome=result,
                        error=(outcome.error or "")[:ERROR_TEXT] or None,
                    )
                )
                moved = await session.exec(
                    update(WebhookMessage)
                    .where(
                        col(WebhookMessage.id) == message.id,
                        col(WebhookMessage.claimed_by) == self.token,
                    )
                    .values(**values)
                )
                recorded.append((message, recipient, outcome, result, moved.rowcount > 0))
        for message, recipient, outcome, result, held in recorded:
            if not held:
                logger.warning(
                    "message %s: claim lapsed before its outcome was recorded", message.id
                )
            elif result != "delivered":
                logger.info(
                    "message %s to %s: %s (%s)", message.id, recipient.name, result, outcome.error
                )

    def _next_state(
        self, message: WebhookMessage, outcome: Outcome
    ) -> tuple[str, dict[str, object]]:
        """What became of a message after an attempt (delivered, retrying or failed for good),
        and its row's new values."""
        attempts = message.attempts + 1
        values: dict[str, object] = {
            "attempts": attempts,
            "claimed_by": None,
            "claimed_until": None,
        }
        if outcome.delivered:
            result = "delivered"
            values |= {"status": "delivered", "delivered_at": outcome.at, "last_error": None}
        else:
            next_at = outcome.at + retry_delay(self.settings, attempts)
            give_up = message.retry_from + timedelta(seconds=self.settings.webhook_give_up_seconds)
            result = "failed" if next_at > give_up else "retrying"
            values |= {
                "status": "failed" if result == "failed" else "pending",
                "next_attempt_at": next_at,
                "last_error": (outcome.error or "")[:ERROR_TEXT],
            }
        return result, values


async def _database_now(session: AsyncSession) -> datetime:
    connection = await session.connection()  # on SQLite: BEGIN IMMEDIATE, the write lock
    if connection.dialect.name == "postgresql":
        now: datetime = (await connection.execute(text("SELECT clock_timestamp()"))).scalar_one()
        return now
    return utcnow()  # SQLite: one host, one clock


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """``consent-ledger worker``: deliver until ``stop`` is set."""
    database = Database(settings)
    deliverer = Deliverer(settings, database)
    try:
        await deliverer.run(stop)
    finally:
        await deliverer.aclose()
        await database.dispose()
