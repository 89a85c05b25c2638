"""Responses remembered per Idempotency-Key, so a retried write replays instead of writing twice."""

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, utcnow
from app.models import base as _base  # noqa: F401


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_record"

    principal: str = Field(primary_key=True, max_length=255)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    status_code: int
    response_body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True)
    )
