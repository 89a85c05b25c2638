"""The reference endpoints, served by the same framework and the same uvicorn settings as the
service: the first two are what every throughput result is divided by, the third stands beside
the service's consent change in the latency step's runs with writes:

- ``GET /bare``: a constant, the ceiling of FastAPI + uvicorn on this machine;
- ``GET /pk?subject_id=``: one primary-key lookup on the raw driver (asyncpg, or sqlite3 through
  aiosqlite), the ceiling of a handler that must ask the database one thing;
- ``PUT /write?subject_id=``: the least durable write, one row inserted and committed on the raw
  driver (a WAL flush on PostgreSQL; SQLite with ``synchronous=FULL``, as the service runs it),
  into a table of its own: the floor under a consent change, for the checks' tail with writes.

    DATABASE_URL=… uvicorn bench.reference:app --factory …
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, HTTPException

POSTGRES_TABLE = """CREATE TABLE IF NOT EXISTS bench_reference_write
    (id bigserial PRIMARY KEY, subject_id text NOT NULL, at timestamptz NOT NULL DEFAULT now())"""
SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS bench_reference_write
    (id INTEGER PRIMARY KEY, subject_id TEXT NOT NULL, at TEXT DEFAULT CURRENT_TIMESTAMP)"""


def app() -> FastAPI:
    url = os.environ["DATABASE_URL"]
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if url.startswith("sqlite"):
            import aiosqlite

            # A connection for reads and one for writes (each is a thread of its own), so that
            # a read does not queue behind a write's fsync: WAL lets them run side by side.
            path = url.split(":///", 1)[1]
            state["sqlite"] = await aiosqlite.connect(path)
            state["sqlite_writes"] = await aiosqlite.connect(path, isolation_level=None)
            await state["sqlite_writes"].execute("PRAGMA synchronous=FULL")
            await state["sqlite_writes"].execute(SQLITE_TABLE)
            yield
            await state["sqlite"].close()
            await state["sqlite_writes"].close()
        else:
            import asyncpg

            dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            state["pool"] = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
            with suppress(asyncpg.UniqueViolationError):  # the other worker made it just now
                await state["pool"].execute(POSTGRES_TABLE)
            yield
            await state["pool"].close()

    api = FastAPI(lifespan=lifespan)

    @api.get("/bare")
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @api.get("/pk")
    async def pk(subject_id: str) -> dict[str, str]:
        if "pool" in state:
            row = await state["pool"].fetchrow(
                "SELECT status FROM subject WHERE id = $1", subject_id
            )
        else:
            cursor = await state["sqlite"].execute(
                "SELECT status FROM subject WHERE id = ?", (subject_id,)
            )
            row = await cursor.fetchone()
        if row is None:
            raise HTTPException(404)
        return {"status": row[0]}

    @api.put("/write")
    async def write(subject_id: str) -> dict[str, bool]:
        if "pool" in state:
            await state["pool"].execute(
                "INSERT INTO bench_reference_write (subject_id) VALUES ($1)", subject_id
            )
        else:
            await state["sqlite_writes"].execute(  # autocommit: one row, one commit
                "INSERT INTO bench_reference_write (subject_id) VALUES (?)", (subject_id,)
            )
        return {"ok": True}

    return api
