"""API keys for services and staff. Only a SHA-256 digest of each key is stored."""

import uuid
from datetime import datetime

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, utcnow, uuid7
from app.models import base as _base  # noqa: F401


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    # Unique forever, revoked keys included: the ledger names keys, so a name means one key.
    name: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)
    # SHA-256 of the whole key, hex. Keys are 256 random bits, so a fast digest is enough: there
    # is nothing to brute-force that is smaller than the key itself.
    key_hash: str = Field(max_length=64, unique=True)
    # The first characters of the key, to tell keys apart in listings and logs.
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    last_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
