"""Current consent state per (subject, target, purpose), and the append-only ledger behind it."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime
from app.models import base as _base  # noqa: F401


class Consent(SQLModel, table=True):
    """The latest event per pair, denormalised for the check. Always written with its event."""

    __tablename__ = "consent"
    __table_args__ = (
        ForeignKeyConstraint(
            ["purpose_key", "target_key"],
            ["purpose_target.purpose_key", "purpose_target.target_key"],
        ),
    )

    subject_id: str = Field(
        sa_column=Column(String(255), ForeignKey("subject.id"), primary_key=True)
    )
    target_key: str = Field(sa_column=Column(String(64), primary_key=True))
    purpose_key: str = Field(sa_column=Column(String(64), primary_key=True))
    state: str = Field(max_length=16)
    policy_version: str = Field(
        sa_column=Column(String(64), ForeignKey("policy_version.version"), nullable=False)
    )
    event_id: uuid.UUID = Field(
        sa_column=Column(Uuid(), ForeignKey("consent_event.id"), nullable=False)
    )
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )


class ConsentEvent(SQLModel, table=True):
    """One immutable entry of a subject's ledger. No code path updates or deletes a row."""

    __tablename__ = "consent_event"
    __table_args__ = (
        UniqueConstraint("subject_id", "seq"),
        Index(
            "ix_consent_event_subject_pair_seq", "subject_id", "target_key", "purpose_key", "seq"
        ),
        Index("ix_consent_event_recorded_at", "recorded_at"),
    )

    id: uuid.UUID = Field(sa_column=Column(Uuid(), primary_key=True))
    subject_id: str = Field(sa_column=Column(String(255), ForeignKey("subject.id"), nullable=False))
    seq: int
    target_key: str = Field(max_length=64)
    purpose_key: str = Field(max_length=64)
    state: str = Field(max_length=16)
    previous_state: str = Field(max_length=16)
    actor: str = Field(max_length=16)
    actor_id: str | None = Field(default=None, max_length=255)
    source: str = Field(max_length=32)
    policy_version: str = Field(max_length=64)
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    app_version: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    reason: str | None = Field(default=None, max_length=1000)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
