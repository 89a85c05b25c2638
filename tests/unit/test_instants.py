"""The textual forms of an instant: the API's and the ledger hash's (``isoformat_z``), and what
the driver stores on SQLite (``sqlite_value``), which must be what the ORM stores there."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from app.core.driver import sqlite_value
from app.core.types import isoformat_z

INSTANTS = [
    datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC),  # no microseconds: still six digits
    datetime(2026, 11, 28, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(5, 3, 4, 5, 6, 7, 8, tzinfo=UTC),  # a year of one digit: padded to four
    datetime(2026, 1, 1, 1, 30, 0, 5, tzinfo=timezone(timedelta(hours=3))),  # the day before
    datetime(2026, 6, 30, 20, 15, 0, 250_000, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
]


@pytest.mark.parametrize("instant", INSTANTS)
def test_isoformat_z_is_the_one_form_in_utc(instant: datetime) -> None:
    utc = instant.astimezone(UTC)
    expected = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )
    assert isoformat_z(instant) == expected


def test_isoformat_z_examples() -> None:
    assert isoformat_z(INSTANTS[0]) == "2026-01-31T12:00:00.000000Z"
    assert isoformat_z(INSTANTS[2]) == "0005-03-04T05:06:07.000008Z"
    assert isoformat_z(INSTANTS[3]) == "2025-12-31T22:30:00.000005Z"


@pytest.mark.parametrize("instant", INSTANTS)
def test_sqlite_value_stores_an_instant_as_the_orm_does(instant: datetime) -> None:
    store = sqlite.DATETIME().bind_processor(sqlite.dialect())
    assert store is not None
    assert sqlite_value(instant) == store(instant.astimezone(UTC).replace(tzinfo=None))
