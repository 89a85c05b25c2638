"""The migrations run up, down and up again on both databases, and match the models."""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

import app.models
from app.core.config import normalise_database_url
from app.core.migrate import downgrade, upgrade
from tests.conftest import BACKENDS, PG_URL


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=BACKENDS)
def scratch_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
        return
    assert PG_URL is not None
    base = make_url(normalise_database_url(PG_URL))
    name = f"cl_scratch_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(base.render_as_string(hide_password=False), f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(
            _admin(
                base.render_as_string(hide_password=False), f'DROP DATABASE "{name}" WITH (FORCE)'
            )
        )


async def _inspect(url: str) -> tuple[set[str], list[object]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:

            def run(sync: Connection) -> tuple[set[str], list[object]]:
                tables = set(inspect(sync).get_table_names())
                diff = compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}),
                    app.models.metadata,
                )
                return tables, diff

            return await connection.run_sync(run)
    finally:
        await engine.dispose()


def test_upgrade_downgrade_upgrade_leaves_no_drift(scratch_url: str) -> None:
    upgrade(scratch_url)
    tables, diff = asyncio.run(_inspect(scratch_url))
    assert set(app.models.metadata.tables) <= tables
    assert diff == []
    downgrade(scratch_url)
    tables, _ = asyncio.run(_inspect(scratch_url))
    assert tables <= {"alembic_version"}
    upgrade(scratch_url)
    tables, diff = asyncio.run(_inspect(scratch_url))
    assert set(app.models.metadata.tables) <= tables
    assert diff == []
