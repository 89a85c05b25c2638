"""The hot paths served ahead of FastAPI's stack (app.core.serving): they skip it, and answer as
it would: the same documented routes, the router's 405 for other methods, the service's own 500,
a root path; as served and as FastAPI alone would serve the same endpoints (conftest)."""

import gc
import json
import logging
from collections.abc import AsyncIterator

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings
from app.core.serving import ROUTED_NOWHERE, ConsentLedgerAPI
from app.main import YOUNG_COLLECTION_EVERY, create_app
from tests.factories import KEYS, OPTIONAL, auth, check, set_consent

PROBLEM = "application/problem+json"


def test_every_hot_route_is_a_documented_route(app: FastAPI) -> None:
    assert isinstance(app, ConsentLedgerAPI)
    assert app.hot_routes
    paths = app.openapi()["paths"]
    for route in app.hot_routes:
        assert route.methods is not None
        methods = {m.lower() for m in route.methods - {"HEAD"}}
        assert methods <= set(paths.get(route.path, {})), route.path


class Recorder:
    """A middleware added to the application: it sees what goes through FastAPI's stack."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[ConsentLedgerAPI]:
    """The application with a ``Recorder`` added, as middleware is, before it starts: what went
    through FastAPI's stack is in ``app.state.seen``."""
    application = create_app(settings)
    application.state.seen = []
    application.add_middleware(Recorder, seen=application.state.seen)
    async with application.router.lifespan_context(application):
        yield application


async def test_the_hot_paths_are_served_ahead_of_the_stack(
    app: FastAPI, served: str, subject_id: str
) -> None:
    """The checks and the consent changes skip the application's middleware; nothing else does,
    and with the hot routes off (as FastAPI would serve them) they go through it too."""
    seen: list[str] = app.state.seen
    assert seen == [f"GET {ROUTED_NOWHERE}"]  # at start-up (ConsentLedgerAPI.route_once)
    seen.clear()
    async with client_under(app, "") as client:
        await set_consent(client, subject_id, *OPTIONAL, "given")
        response = await client.post(
            f"/v1/subjects/{subject_id}/consents",
            json={"changes": [{"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "given"}]},
        )
        assert response.status_code == 200, response.text
        await check(client, subject_id, *OPTIONAL)
        response = await client.post(
            "/v1/checks",
            json={
                "subject_id": subject_id,
                "items": [{"target": t, "purpose": p} for t, p in [OPTIONAL]],
            },
        )
        assert response.status_code == 200, response.text
        assert (await client.get(f"/v1/subjects/{subject_id}/consents")).status_code == 200
    consents = f"/v1/subjects/{subject_id}/consents"
    hot = [
        f"PUT {consents}/{OPTIONAL[0]}/{OPTIONAL[1]}",
        f"POST {consents}",
        "GET /v1/checks",
        "POST /v1/checks",
    ]
    assert seen == ([f"GET {consents}"] if served == "direct" else [*hot, f"GET {consents}"])


@pytest.mark.usefixtures("served")
async def test_head_and_other_methods_on_a_hot_path_get_the_routers_405(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    for method in ("DELETE", "HEAD"):
        response = await client.request(method, "/v1/checks", params={"subject_id": "u1"})
        assert response.status_code == 405, response.text
        assert response.headers["allow"]
    response = await client.delete("/v1/checks")
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == "DELETE is not allowed on /v1/checks."
    response = await client.patch(f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}")
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == "PUT"


@pytest.mark.usefixtures("served")
async def test_an_unexpected_error_is_the_services_500_and_reaches_the_server(
    app: FastAPI,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As on every route: the service's 500, logged by its handler, and the exception raised
    on to the server (which logs it and closes the connection)."""

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the lookup")

    monkeypatch.setattr(app.state.hot_path, "lookup", broken)
    params = {"subject_id": "u1", "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
    with caplog.at_level(logging.ERROR):
        response = await client.get("/v1/checks", params=params)
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == "An unexpected error occurred; it has been logged."
    logged = [r for r in caplog.records if "unhandled error on GET /v1/checks" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "a bug in the lookup" in str(logged[0].exc_info[1])
    async with client_under(app, "", raise_app_exceptions=True) as raising:
        with pytest.raises(RuntimeError, match="a bug in the lookup"):
            await raising.get("/v1/checks", params=params)


@pytest.mark.usefixtures("served")
async def test_a_root_path_is_served(app: FastAPI, subject_id: str) -> None:
    """Behind a proxy that mounts the service under a prefix (uvicorn --root-path)."""
    seen: list[str] = app.state.seen
    seen.clear()
    async with client_under(app, "/consent") as client:
        await set_consent(client, subject_id, *OPTIONAL, "given")
        assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True
        response = await client.get("/v1/checks", params={"subject_id": subject_id})
        assert response.status_code == 422
        assert response.json()["instance"] == "/consent/v1/checks"
    assert len(seen) == (0 if app.hot_routes else 3)


async def _in_parts(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 7):
        yield body[start : start + 7]


@pytest.mark.usefixtures("served")
async def test_a_body_in_many_parts_is_read_whole(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    """A body may come in many ASGI messages (a slow client, a chunked upload): the consent
    change and the batch check read all of them."""
    change = json.dumps({"state": "given"}).encode()
    response = await client.put(
        f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}",
        content=_in_parts(change),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    items = [{"target": OPTIONAL[0], "purpose": OPTIONAL[1]}]
    batch = json.dumps({"subject_id": subject_id, "items": items}).encode()
    response = await client.post(
        "/v1/checks", content=_in_parts(batch), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert [d["reason"] for d in response.json()["decisions"]] == ["consent_given"]


async def _cut_off(app: FastAPI, method: str, path: str, body: bytes) -> list[dict[str, object]]:
    """What the application sends a client that goes away after a part of its body."""
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = {"host": "testserver", "content-type": "application/json", **auth(KEYS["app"])}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


@pytest.mark.usefixtures("served")
async def test_a_client_gone_before_its_body_ends_gets_a_400_and_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As FastAPI answers it: a 400, not a logged 500 (the server drops it, the client being
    gone), and nothing written."""
    change = f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}"
    for method, path, body in [
        ("PUT", change, json.dumps({"state": "given"}).encode()),
        ("POST", "/v1/checks", json.dumps({"subject_id": subject_id, "items": []}).encode()),
    ]:
        with caplog.at_level(logging.ERROR):
            sent = await _cut_off(app, method, path, body)
        assert sent[0]["status"] == 400, sent
        problem = json.loads(sent[1]["body"])  # type: ignore[arg-type]
        assert problem["detail"] == "There was an error parsing the body"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    unknown = await client.get(f"/v1/subjects/{subject_id}/consents")  # nothing was recorded
    assert unknown.status_code == 404, unknown.text


def client_under(
    app: FastAPI, root_path: str, *, raise_app_exceptions: bool = False
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=app, root_path=root_path, raise_app_exceptions=raise_app_exceptions
    )
    return httpx.AsyncClient(
        transport=transport, base_url=f"http://testserver{root_path}", headers=auth(KEYS["app"])
    )


async def test_the_collector_is_set_for_serving_and_restored_at_shutdown(
    settings: Settings,
) -> None:
    before = gc.get_threshold()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, *before[1:])
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_the_routes_are_built_before_the_first_request(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI builds an included router's routes (their dependencies, parameters and models)
    when a request is first matched against them, on the event loop. The application has it
    done at start-up, so that no request waits for it."""
    built: list[str] = []
    build = fastapi.routing.get_dependant

    def counted(*, path: str, **kwargs: object) -> object:
        built.append(path)
        return build(path=path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fastapi.routing, "get_dependant", counted)
    application = create_app(settings)
    built.clear()
    async with application.router.lifespan_context(application):
        assert "/v1/audit/checkpoints" in built, "FastAPI builds its routes otherwise now"
        built.clear()
        async with client_under(application, "") as client:
            assert (await client.get("/v1/catalogue")).status_code == 200
            response = await client.get("/v1/audit/checkpoints", headers=auth(KEYS["auditor"]))
        assert response.status_code == 200, response.text
        assert built == []
