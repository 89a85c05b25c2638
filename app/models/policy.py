"""Published versions of the privacy policy. Rows are only ever added."""

from datetime import datetime

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, utcnow
from app.models import base as _base  # noqa: F401


class PolicyVersion(SQLModel, table=True):
    __tablename__ = "policy_version"

    version: str = Field(primary_key=True, max_length=64)
    effective_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    published_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    text_sha256: str = Field(max_length=64)
    text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    url: str | None = Field(default=None, max_length=2000)
    summary: str = Field(default="", max_length=10_000)
    material: bool = False
    affected_purposes: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
