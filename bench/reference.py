"""The two reference endpoints every result is divided by, served by the same framework and the
same uvicorn settings as the service:

- ``GET /bare``: a constant, the ceiling of FastAPI + uvicorn on this machine;
- ``GET /pk?subject_id=``: one primary-key lookup on the raw driver (asyncpg, or sqlite3 through
  aiosqlite), the ceiling of a handler that must ask the database one thing.

    DATABASE_URL=… uvicorn bench.reference:app --factory …
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException


def app() -> FastAPI:
    url = os.environ["DATABASE_URL"]
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if url.startswith("sqlite"):
            import aiosqlite

            state["sqlite"] = await aiosqlite.connect(url.split(":///", 1)[1])
            yield
            await state["sqlite"].close()
        else:
            import asyncpg

            dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            state["pool"] = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
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

    return api
