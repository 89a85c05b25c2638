"""Data-subject requests and the log of everything that happened to each. Log rows are only
ever added."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, String, Text, Uuid
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, uuid7
from app.models import base as _base  # noqa: F401


class DataSubjectRequest(SQLModel, table=True):
    __tablename__ = "data_subject_request"

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    subject_id: str = Field(
        sa_column=Column(String(255), ForeignKey("subject.id"), nullable=False, index=True)
    )
    type: str = Field(max_length=40, index=True)
    status: str = Field(max_length=24, index=True)
    received_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    due_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    jurisdiction: str = Field(max_length=8)
    details: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    deletion_circumstance: str | None = Field(default=None, max_length=40)
    repeated: bool = False  # same type, same subject, within 12 months: the fee rule may apply
    fee: str | None = Field(default=None, max_length=16)  # the officer's decision: waived|charged
    identity_method: str | None = Field(default=None, max_length=40)
    identity_verified_by: str | None = Field(default=None, max_length=255)
    identity_verified_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    extension_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    resolution: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    refusal_ground: str | None = Field(default=None, max_length=40)
    refusal_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    closed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    # A completed access request: the export the subject was given, as it was then.
    export: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class RequestEvent(SQLModel, table=True):
    __tablename__ = "request_event"

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    request_id: uuid.UUID = Field(
        sa_column=Column(Uuid(), ForeignKey("data_subject_request.id"), nullable=False, index=True)
    )
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=16)
    actor_id: str = Field(max_length=255)
    action: str = Field(max_length=32)
    from_status: str | None = Field(default=None, max_length=24)
    to_status: str = Field(max_length=24)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
