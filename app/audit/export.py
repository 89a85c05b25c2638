"""Streaming the ledger out: one consistent snapshot, rows as they are read, flat memory.

The rows are read inside one read transaction, which is a snapshot on both databases:
PostgreSQL runs it REPEATABLE READ (every statement sees the database as of the first one), and
SQLite's WAL keeps a reader on the version of the database it started on. A change is committed
with all its events at once, so an export never holds part of one.
"""

import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from sqlalchemy import Select, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.filters import EventFilter
from app.consents.ledger import HASHED_FIELDS
from app.core.db import Database
from app.core.types import isoformat_z
from app.models import ConsentEvent

Format = Literal["ndjson", "csv"]
COLUMNS = (*HASHED_FIELDS, "hash")  # the API's event fields, in the hash's order
MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
BATCH = 2000

_table = ConsentEvent.__table__  # type: ignore[attr-defined]
EVENT_COLUMNS = [
    _table.c[{"target": "target_key", "purpose": "purpose_key"}.get(name, name)] for name in COLUMNS
]


def _statement(filters: EventFilter) -> Select[Any]:
    return (  # type: ignore[no-any-return]
        select(*EVENT_COLUMNS)
        .where(*filters.conditions())
        .order_by(col(ConsentEvent.subject_id), col(ConsentEvent.seq))
    )


def event_record(row: Any) -> dict[str, Any]:
    """An event row (the columns of ``EVENT_COLUMNS``, first) as the API's event object."""
    record = dict(zip(COLUMNS, row[: len(COLUMNS)], strict=True))
    record["id"] = str(record["id"])
    record["recorded_at"] = isoformat_z(record["recorded_at"])
    if record["expires_at"] is not None:
        record["expires_at"] = isoformat_z(record["expires_at"])
    return record


def _ndjson(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def _csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for record in records:
        evidence = json.dumps(record["evidence"], ensure_ascii=False, sort_keys=True)
        writer.writerow(
            ["" if v is None else v for v in (record | {"evidence": evidence}).values()]
        )
    return buffer.getvalue()


def csv_header() -> str:
    return ",".join(COLUMNS) + "\r\n"


def snapshot(database: Database) -> AsyncSession:
    """A read session whose transaction is a consistent snapshot (see the module docstring)."""
    if database.dialect != "postgresql":
        return database.read_sessions()
    engine = database.engine.execution_options(
        isolation_level="REPEATABLE READ", postgresql_readonly=True
    )
    return database.read_sessions(bind=engine)


async def count(session: AsyncSession, filters: EventFilter) -> int:
    statement = select(func.count()).select_from(ConsentEvent).where(*filters.conditions())
    return (await session.exec(statement)).one()


async def stream_export(
    database: Database,
    filters: EventFilter,
    fmt: Format,
    *,
    on_total: Callable[[int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> AsyncIterator[str]:
    """The export as text chunks, produced as rows are read, from one snapshot."""
    render = _ndjson if fmt == "ndjson" else _csv
    session = snapshot(database)
    try:
        async with session.begin():
            if on_total is not None:
                on_total(await count(session, filters))
            if fmt == "csv":
                yield csv_header()
            result = await session.stream(_statement(filters).execution_options(yield_per=BATCH))
            async for partition in result.partitions():
                records = [event_record(row) for row in partition]
                yield render(records)
                if on_rows is not None:
                    on_rows(len(records))
    finally:
        await session.close()
