"""Test databases, the application and an HTTP client.

Every database test runs on SQLite; when ``TEST_DATABASE_URL`` names a PostgreSQL database (CI
always sets it) it runs there too. That database is wiped: point it at a database made for tests.
Test databases are built by running the alembic migrations, never ``create_all``.
"""

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import Settings, normalise_database_url
from app.core.migrate import upgrade
from app.core.security import hash_api_key
from app.core.serving import ConsentLedgerAPI
from app.core.types import utcnow
from app.main import create_app
from app.models import ApiKey
from tests.factories import KEY_NAMES, KEYS, TEST_SECRET, auth

PG_URL = os.environ.get("TEST_DATABASE_URL")
BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]
DATA_TABLES = (
    "webhook_attempt",
    "webhook_message",
    "recipient",
    "request_event",
    "data_subject_request",
    "checkpoint_head",
    "checkpoint",
    "consent",
    "consent_event",
    "guardian_consent",
    "permission_observation",
    "subject",
    "idempotency_record",
    "api_key",
    "policy_version",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    if PG_URL:
        try:
            asyncio.run(_reset_postgres(normalise_database_url(PG_URL)))
        except Exception as exc:
            pytest.exit(f"TEST_DATABASE_URL is set but unusable: {exc!r}", returncode=3)


async def _reset_postgres(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


async def _seed_keys(url: str, *, truncate: bool = False) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            if truncate:
                await connection.execute(text(f"TRUNCATE {', '.join(DATA_TABLES)} CASCADE"))
            await connection.execute(
                insert(ApiKey),
                [
                    {
                        "id": uuid.uuid4(),
                        "name": KEY_NAMES[role],
                        "role": role,
                        "key_hash": hash_api_key(key),
                        "prefix": key[:10],
                        "created_at": utcnow(),
                    }
                    for role, key in KEYS.items()
                ],
            )
    finally:
        await engine.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def migrated_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database at the newest migration: a template file on SQLite, the test database on PG."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("template") / "ledger.db"
        url = f"sqlite+aiosqlite:///{path}"
    else:
        assert PG_URL is not None
        url = normalise_database_url(PG_URL)
    upgrade(url)
    if request.param == "sqlite":
        asyncio.run(_seed_keys(url))
    return url


@pytest.fixture
def database_url(migrated_database: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database with no subjects, consents or events in it."""
    if migrated_database.startswith("sqlite"):
        template = Path(migrated_database.removeprefix("sqlite+aiosqlite:///"))
        copy = tmp_path / "ledger.db"
        shutil.copyfile(template, copy)
        yield f"sqlite+aiosqlite:///{copy}"
    else:
        asyncio.run(_seed_keys(migrated_database, truncate=True))
        yield migrated_database


@pytest.fixture
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key=TEST_SECRET)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[ConsentLedgerAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no credential."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The mobile app's backend: a client with the ``app`` role's key."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", headers=auth(KEYS["app"])
    ) as client:
        yield client


@pytest.fixture
def subject_id() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["direct", "fastapi"])
def served(request: pytest.FixtureRequest, app: ConsentLedgerAPI) -> Iterator[str]:
    """The hot paths as served (ahead of FastAPI's stack, ``app.hot_routes``), and as FastAPI
    itself would serve the same endpoints: the two must answer alike."""
    if request.param == "fastapi":
        hot, app.hot_routes = app.hot_routes, []
        yield request.param
        app.hot_routes = hot
    else:
        yield request.param
