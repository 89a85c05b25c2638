"""The hot paths served ahead of FastAPI's stack (app.core.serving) answer as the stack would:
the same documented routes, the router's 405 for other methods, the service's own 500, and a
root path, as served and as FastAPI alone would serve the same endpoints (conftest)."""

import logging

import httpx
import pytest
from fastapi import FastAPI

from app.core.serving import ConsentLedgerAPI
from tests.factories import KEYS, OPTIONAL, auth, set_consent

PROBLEM = "application/problem+json"


def test_every_hot_route_is_a_documented_route(app: FastAPI) -> None:
    assert isinstance(app, ConsentLedgerAPI)
    assert app.hot_routes
    paths = app.openapi()["paths"]
    for route in app.hot_routes:
        assert route.methods is not None
        methods = {m.lower() for m in route.methods - {"HEAD"}}
        assert methods <= set(paths.get(route.path, {})), route.path


@pytest.mark.usefixtures("served")
async def test_another_method_on_a_hot_path_gets_the_routers_405(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    response = await client.delete("/v1/checks")
    assert response.status_code == 405, response.text
    assert response.headers["content-type"] == PROBLEM
    assert {m.strip() for m in response.headers["allow"].split(",")} <= {"GET", "HEAD", "POST"}
    assert response.json()["detail"] == "DELETE is not allowed on /v1/checks."

    response = await client.patch(f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}")
    assert response.status_code == 405, response.text
    assert "PUT" in response.headers["allow"]


@pytest.mark.usefixtures("served")
async def test_an_unexpected_error_is_the_services_500_logged_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the lookup")

    monkeypatch.setattr(app.state.hot_path, "lookup", broken)
    with caplog.at_level(logging.ERROR):
        response = await client.get(
            "/v1/checks", params={"subject_id": "u1", "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
        )
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == "An unexpected error occurred; it has been logged."
    logged = [r for r in caplog.records if "unhandled error on GET /v1/checks" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None and "a bug in the lookup" in str(logged[0].exc_info[1])


@pytest.mark.usefixtures("served")
async def test_a_root_path_is_served(app: FastAPI, subject_id: str) -> None:
    """Behind a proxy that mounts the service under a prefix (uvicorn --root-path)."""
    transport = httpx.ASGITransport(app=app, root_path="/consent")
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver/consent", headers=auth(KEYS["app"])
    ) as client:
        await set_consent(client, subject_id, *OPTIONAL, "given")
        response = await client.get(
            "/v1/checks",
            params={"subject_id": subject_id, "target": OPTIONAL[0], "purpose": OPTIONAL[1]},
        )
        assert response.status_code == 200, response.text
        assert response.json()["decisions"][0]["allowed"] is True
        response = await client.get("/v1/checks", params={"subject_id": subject_id})
        assert response.status_code == 422
        assert response.json()["instance"] == "/consent/v1/checks"
