"""Keyset pagination: ``?limit=`` (clamped) and an opaque ``?cursor=``."""

import base64
import binascii
import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Protocol, TypeVar

from fastapi import Query
from pydantic import BaseModel

from app.core.errors import InvalidInput
from app.core.schemas import NO_CONTROL_CHARACTERS

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def cursor_instant(value: str) -> datetime:
    """An instant inside a cursor; a 422 unless it is one this service could have written."""
    try:
        instant = datetime.fromisoformat(value)
        if instant.tzinfo is None:
            raise ValueError("naive")
        return instant.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(
            "cursor is not one this service issued; pass next_cursor from the previous page"
        ) from None


def cursor_uuid(value: str) -> uuid.UUID:
    """An id inside a cursor; a 422 unless it is one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput("cursor is not one this service issued") from None


def cursor_text(value: str) -> str:
    """Text inside a cursor (a subject id): printable and valid UTF-8, or a 422."""
    if not value or len(value) > 255 or not re.fullmatch(NO_CONTROL_CHARACTERS, value):
        raise InvalidInput("cursor is not one this service issued")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInput("cursor is not one this service issued") from None
    return value


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    return max(1, min(limit, MAX_LIMIT))


LimitQuery = Annotated[
    int | None,
    Query(description=f"Page size, 1 to {MAX_LIMIT} (clamped); default {DEFAULT_LIMIT}."),
]
CursorQuery = Annotated[
    str | None, Query(max_length=512, description="The `next_cursor` of the previous page.")
]


def encode_cursor(position: dict[str, Any]) -> str:
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, expect: dict[str, type]) -> dict[str, Any]:
    """Decode a cursor made by ``encode_cursor``; a 422 if it was not made by us."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    if (
        not isinstance(position, dict)
        or set(position) != set(expect)
        or not all(type(position[k]) is t for k, t in expect.items())
        or not all(
            0 <= value < 2**31 for value in position.values() if type(value) is int
        )  # every integer we put in a cursor fits a PostgreSQL integer column
    ):
        raise InvalidInput(
            "cursor is not one this service issued; pass next_cursor from the previous page",
            errors=None,
        )
    return position


class _Keyed(Protocol):
    @property
    def id(self) -> uuid.UUID: ...


def after_id(cursor: str | None) -> uuid.UUID | None:
    """The id a keyset-by-id page starts after (None: the first page)."""
    return cursor_uuid(decode_cursor(cursor, expect={"id": str})["id"]) if cursor else None


def next_id_cursor(rows: Sequence[_Keyed], size: int) -> str | None:
    """For ``rows`` fetched with ``limit=size + 1``: the next page's cursor, if there is one."""
    return encode_cursor({"id": str(rows[size - 1].id)}) if len(rows) > size else None
