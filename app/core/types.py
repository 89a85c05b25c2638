"""Column types and identifiers shared by every table, and the one textual form of an instant."""

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import PlainSerializer
from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit Unix milliseconds, then random bits."""
    millis = time.time_ns() // 1_000_000
    value = (millis & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10)) & (2**80 - 1)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
    return uuid.UUID(int=value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    text (fixed width, so they sort) and come back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC instant is needed")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL on SQLite
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def isoformat_z(value: datetime) -> str:
    """The one textual form of an instant: ``2026-01-31T12:00:00.000000Z``."""
    # isoformat pads the year to four digits as strftime does not, and ends in "+00:00" once
    # in UTC: a third of strftime's time, and it runs several times in every consent change.
    return value.astimezone(UTC).isoformat("T", "microseconds")[:-6] + "Z"


# Every instant the API returns has the one form the ledger hashes: 2026-01-31T12:00:00.000000Z.
Instant = Annotated[datetime, PlainSerializer(isoformat_z, return_type=str)]
