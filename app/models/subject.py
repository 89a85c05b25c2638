"""A data subject (a user of the app, by an opaque id the app chose) and the head of its ledger."""

from datetime import date, datetime

from sqlalchemy import Column, String
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, utcnow
from app.models import base as _base  # noqa: F401

GENESIS_HASH = "0" * 64


class Subject(SQLModel, table=True):
    __tablename__ = "subject"

    id: str = Field(sa_column=Column(String(255), primary_key=True))
    jurisdiction: str = Field(default="CN", max_length=8)
    # At most one of these three says how old the subject is; none: treated as an adult.
    birth_year: int | None = None
    birth_date: date | None = None
    age: int | None = None
    age_stated_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    # When the first verified guardian's consent was recorded (see guardian_consent).
    guardian_verified_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    status: str = Field(default="active", max_length=16)  # "active" | "cancelled"
    cancelled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    # When the attributes and OS observations were last erased (deletion, cancellation).
    erased_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    # Kept when a child's age attributes are erased: until this day they are still a child.
    child_until: date | None = None
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    # Head of the subject's hash chain. Every ledger append locks this row and moves the head, so
    # concurrent writers queue up behind each other instead of forking the chain.
    last_seq: int = 0
    head_hash: str = Field(default=GENESIS_HASH, max_length=64)
    last_event_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
