"""What the OS last reported for a permission on one of a subject's devices."""

from datetime import datetime

from sqlalchemy import Column, ForeignKey, String
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime
from app.models import base as _base  # noqa: F401


class PermissionObservation(SQLModel, table=True):
    __tablename__ = "permission_observation"

    subject_id: str = Field(
        sa_column=Column(String(255), ForeignKey("subject.id"), primary_key=True)
    )
    device_id: str = Field(sa_column=Column(String(128), primary_key=True))
    target_key: str = Field(
        sa_column=Column(String(64), ForeignKey("target.key"), primary_key=True)
    )
    platform: str = Field(max_length=16)
    native_value: str = Field(max_length=64)
    state: str = Field(max_length=24)
    accuracy: str | None = Field(default=None, max_length=16)
    scope: str | None = Field(default=None, max_length=16)
    observed_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # The last time the OS reported a denial: the prompt cool-down counts from it.
    last_denied_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
