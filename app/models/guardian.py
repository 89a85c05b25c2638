"""Verified consents of children's guardians. Rows are only ever added."""

import uuid
from datetime import datetime

from sqlalchemy import Column, ForeignKey, String
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, utcnow, uuid7
from app.models import base as _base  # noqa: F401


class GuardianConsent(SQLModel, table=True):
    __tablename__ = "guardian_consent"

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    subject_id: str = Field(
        sa_column=Column(String(255), ForeignKey("subject.id"), nullable=False, index=True)
    )
    guardian_ref: str = Field(max_length=255)
    relationship: str = Field(max_length=32)
    verification_method: str = Field(max_length=32)
    evidence_ref: str = Field(max_length=1024)
    verifier: str = Field(max_length=255)
    verified_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    recorded_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    recorded_by: str = Field(max_length=255)
