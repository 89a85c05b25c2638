"""Recipients (entrusted processors and third parties), the webhook outbox and its attempts.

A message is written in the same transaction as the ledger change it announces, one per recipient,
and is only ever moved forward by a delivery worker; attempts are only ever added.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, String, Text, Uuid
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, uuid7
from app.models import base as _base  # noqa: F401


class Recipient(SQLModel, table=True):
    __tablename__ = "recipient"

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    name: str = Field(sa_column=Column(String(255), nullable=False, unique=True))
    kind: str = Field(max_length=24)  # "processor" (entrusted) | "third_party"
    url: str = Field(sa_column=Column(String(2048), nullable=False))
    secret: str = Field(max_length=128)  # whsec_…: the key its messages are signed with
    # What the recipient relies on; None: every purpose (or target) of the catalogue.
    purposes: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    targets: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    created_by: str = Field(max_length=255)
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    disabled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class WebhookMessage(SQLModel, table=True):
    """One message to one recipient. ``id`` is the ``webhook-id`` a receiver deduplicates on."""

    __tablename__ = "webhook_message"
    # The deliverer's claim looks up each enabled recipient's due messages, oldest first; a
    # paused recipient's backlog, however long, is never read. The index also serves every
    # lookup by recipient.
    __table_args__ = (
        Index("ix_webhook_message_recipient_due", "recipient_id", "status", "next_attempt_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    recipient_id: uuid.UUID = Field(
        sa_column=Column(Uuid(), ForeignKey("recipient.id"), nullable=False)
    )
    subject_id: str = Field(sa_column=Column(String(255), nullable=False, index=True))
    type: str = Field(max_length=48)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    status: str = Field(max_length=16)  # "pending" | "delivered" | "failed"
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # Retries give up this long after this instant (creation, or the last replay).
    retry_from: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # A worker's claim: while it lasts no other worker takes the message.
    claimed_by: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid(), nullable=True))
    claimed_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class WebhookAttempt(SQLModel, table=True):
    __tablename__ = "webhook_attempt"

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    message_id: uuid.UUID = Field(
        sa_column=Column(Uuid(), ForeignKey("webhook_message.id"), nullable=False, index=True)
    )
    recipient_id: uuid.UUID = Field(
        sa_column=Column(Uuid(), ForeignKey("recipient.id"), nullable=False, index=True)
    )
    attempted_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    duration_ms: int
    status_code: int | None = None
    outcome: str = Field(max_length=16)  # "delivered" | "retrying" | "failed"
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
