"""Generated data for the benchmarks: N subjects, each with a few consents and a ledger behind
them, written in bulk (COPY on PostgreSQL, one executemany transaction on SQLite).

The events carry made-up hashes (the check never reads them, and computing 10 million SHA-256
chains in Python would dominate the set-up); `consent-ledger verify` would flag them.
"""

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.checkpoints import create_checkpoint, signing_key
from app.catalogue.loader import load_catalogue
from app.catalogue.service import sync_catalogue
from app.core.config import Settings
from app.core.db import Database
from app.models import Recipient
from app.webhooks.signing import new_secret

# (target, purpose) pairs each subject consents to; the check benchmarks ask about the first.
PAIRS = [
    ("gender", "service_improvement"),
    ("device.model", "service_improvement"),
    ("age", "service_improvement"),
    ("device.os_version", "service_improvement"),
    ("device.resolution", "service_improvement"),
]
POLICY = "2022-02"
START = datetime(2026, 1, 1, tzinfo=UTC)


def subject_id(n: int) -> str:
    return f"bench-{n:08d}"


def rows(
    subjects: int, events_per_subject: int
) -> Iterator[tuple[list[Any], list[Any], list[Any]]]:
    """Per subject: its row, its events, its current consents (the last event per pair)."""
    hash_ = "0" * 64
    for n in range(subjects):
        sid = subject_id(n)
        at = START + timedelta(seconds=n)
        events, last = [], {}
        for seq in range(1, events_per_subject + 1):
            target, purpose = PAIRS[(seq - 1) % len(PAIRS)]
            # The first pair ends up given; the others alternate.
            state = (
                "given"
                if (seq - 1) // len(PAIRS) % 2 == 0 or seq % len(PAIRS) == 1
                else "withdrawn"
            )
            event_id = uuid.uuid4()
            previous = last.get((target, purpose), (None, "not_asked"))[1]
            events.append(
                [event_id, sid, seq, target, purpose, state, previous, "app", "bench", "api",
                 POLICY, at, None, "{}", None, None, None, hash_, hash_]
            )  # fmt: skip
            last[(target, purpose)] = (event_id, state)
        consents = [
            [sid, t, p, state, POLICY, event_id, at, None]
            for (t, p), (event_id, state) in last.items()
        ]
        subject = [sid, "CN", 1990, None, None, None, None, "active", at, at,
                   events_per_subject, hash_, at, None, None, None]  # fmt: skip
        yield subject, events, consents


SUBJECT_COLUMNS = [
    "id", "jurisdiction", "birth_year", "birth_date", "age", "age_stated_at",
    "guardian_verified_at", "status", "created_at", "updated_at", "last_seq", "head_hash",
    "last_event_at", "cancelled_at", "erased_at", "child_until",
]  # fmt: skip
EVENT_COLUMNS = [
    "id", "subject_id", "seq", "target_key", "purpose_key", "state", "previous_state", "actor",
    "actor_id", "source", "policy_version", "recorded_at", "expires_at", "evidence",
    "app_version", "locale", "reason", "prev_hash", "hash",
]  # fmt: skip
CONSENT_COLUMNS = [
    "subject_id", "target_key", "purpose_key", "state", "policy_version", "event_id",
    "recorded_at", "expires_at",
]  # fmt: skip


async def _catalogue(url: str) -> None:
    """The catalogue, and one recipient relying on every pair, so that every withdrawal writes
    an outbox message; it is disabled (a processor paused for maintenance), so nothing is sent
    and its messages wait."""
    engine = create_async_engine(url)
    async with AsyncSession(engine) as session, session.begin():
        await sync_catalogue(session, load_catalogue())
        session.add(
            Recipient(
                name="bench-paused-processor",
                kind="processor",
                url="https://processor.invalid/webhooks",
                secret=new_secret(),
                created_at=START,
                created_by="bench",
                updated_at=START,
                disabled_at=START,
            )
        )
    await engine.dispose()


REMEMBERED_COLUMNS = [
    "principal", "key", "fingerprint", "status_code", "response_body", "created_at",
]  # fmt: skip


def remembered(subjects: int) -> list[list[Any]]:
    """The responses a live service remembers under Idempotency-Keys: one for every tenth
    subject, from the last day (the keys' retention), under an earlier key's name. A table
    that starts empty would not be the service's steady state."""
    now = datetime.now(UTC)
    body = (
        '{"subject_id":"%s","target":"gender","purpose":"service_improvement",'
        '"state":"withdrawn","policy_version":"2022-02","recorded_at":"%s","expires_at":null}'
    )
    records = []
    for n in range(0, subjects, 10):
        at = now - timedelta(hours=23) + timedelta(seconds=n % (22 * 3600))
        records.append(
            ["app:bench-earlier", str(uuid.uuid4()), "0" * 64, 200,
             body % (subject_id(n), at.isoformat()), at]
        )  # fmt: skip
    return records


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite+aiosqlite:///…`` URL, as the harness builds them."""
    return url.split(":///", 1)[1]


def libpq_url(url: str) -> str:
    """A ``postgresql+asyncpg://`` URL as asyncpg and psql take it."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


def seed(url: str, subjects: int, events_per_subject: int, batch: int = 20_000) -> None:
    asyncio.run(_catalogue(url))
    if url.startswith("sqlite"):
        _seed_sqlite(sqlite_path(url), subjects, events_per_subject, batch)
    else:
        asyncio.run(_seed_postgres(url, subjects, events_per_subject, batch))


def checkpoint(url: str, secret: str) -> float:
    """Write a signed checkpoint now, as the hourly job would; the seconds it took. The harness
    writes one after seeding, so that the hourly job finds a recent one and falls in no
    measured run (its cost is measured on its own)."""

    async def write() -> float:
        database = Database(Settings(database_url=url, secret_key=secret))
        try:
            started = time.monotonic()
            await create_checkpoint(database, signing_key(secret))
            return time.monotonic() - started
        finally:
            await database.dispose()

    return asyncio.run(write())


def _chunks(
    subjects: int, events_per_subject: int, batch: int
) -> Iterator[tuple[list, list, list]]:  # type: ignore[type-arg]
    s_rows: list[Any] = []
    e_rows: list[Any] = []
    c_rows: list[Any] = []
    for subject, events, consents in rows(subjects, events_per_subject):
        s_rows.append(subject)
        e_rows.extend(events)
        c_rows.extend(consents)
        if len(e_rows) >= batch:
            yield s_rows, e_rows, c_rows
            s_rows, e_rows, c_rows = [], [], []
    if s_rows:
        yield s_rows, e_rows, c_rows


Table = tuple[str, list[str], list[Any]]


def _tables(
    chunks: Iterator[tuple[list, list, list]],  # type: ignore[type-arg]
    records: list[list[Any]],
) -> Iterator[list[Table]]:
    """What to write, one transaction's worth at a time."""
    for s_rows, e_rows, c_rows in chunks:
        yield [
            ("subject", SUBJECT_COLUMNS, s_rows),
            ("consent_event", EVENT_COLUMNS, e_rows),
            ("consent", CONSENT_COLUMNS, c_rows),
        ]
    yield [("idempotency_record", REMEMBERED_COLUMNS, records)]


def _seed_sqlite(path: str, subjects: int, events_per_subject: int, batch: int) -> None:
    def text(value: Any) -> Any:
        if isinstance(value, datetime):  # as SQLAlchemy stores a naive UTC DATETIME
            return (
                value.astimezone(UTC)
                .replace(tzinfo=None)
                .isoformat(sep=" ", timespec="microseconds")
            )
        if isinstance(value, uuid.UUID):
            return value.hex
        return value

    connection = sqlite3.connect(path)
    chunks = _chunks(subjects, events_per_subject, batch)
    try:
        for tables in _tables(chunks, remembered(subjects)):
            with connection:
                for table, columns, values in tables:
                    marks = ", ".join("?" * len(columns))
                    connection.executemany(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                        ([text(v) for v in row] for row in values),
                    )
    finally:
        connection.close()


async def _seed_postgres(url: str, subjects: int, events_per_subject: int, batch: int) -> None:
    import asyncpg

    connection = await asyncpg.connect(libpq_url(url))
    chunks = _chunks(subjects, events_per_subject, batch)
    try:
        for tables in _tables(chunks, remembered(subjects)):
            async with connection.transaction():
                for table, columns, values in tables:
                    await connection.copy_records_to_table(
                        table, records=[tuple(r) for r in values], columns=columns
                    )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
