import httpx
from fastapi import FastAPI

from app.checks.fast import HotPath
from app.core.config import Settings
from app.core.db import Database
from tests.factories import TEST_SECRET


async def test_put_subject_creates_then_replaces(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    created = await client.put(
        f"/v1/subjects/{subject_id}", json={"jurisdiction": "EU", "birth_year": 2001}
    )
    assert created.status_code == 201
    assert created.json()["jurisdiction"] == "EU"
    updated = await client.put(f"/v1/subjects/{subject_id}", json={"birth_year": 2000})
    assert updated.status_code == 200
    body = updated.json()
    assert (body["jurisdiction"], body["birth_year"], body["status"]) == ("CN", 2000, "active")
    assert body["created_at"] == created.json()["created_at"]


async def test_get_unknown_subject_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/subjects/who")
    assert response.status_code == 404
    assert response.json()["type"].endswith("subject-not-found")


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_readiness_is_503_when_the_database_is_unreachable(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    working, hot_path = app.state.database, app.state.hot_path
    unreachable = Settings(
        database_url="postgresql://nobody@127.0.0.1:9/none", secret_key=TEST_SECRET
    )
    app.state.database = Database(unreachable)
    app.state.hot_path = HotPath(unreachable, app.state.database)
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        check = await client.get(
            "/v1/checks", params={"subject_id": "u", "target": "gender", "purpose": "age"}
        )
        assert check.status_code in (422, 503)
        check = await client.get(
            "/v1/checks",
            params={"subject_id": "u", "target": "gender", "purpose": "service_improvement"},
        )
        assert check.status_code == 503
        assert check.headers["retry-after"] == "1"
        assert check.json()["type"].endswith("database-unavailable")
    finally:
        await app.state.database.dispose()
        app.state.database, app.state.hot_path = working, hot_path
