"""The check's hot path (one statement on the driver, app.checks.fast) against the ORM path it
replaces on the routes (app.checks.service): the same decisions in every state a subject can be
in, on both databases; and nothing it caches can serve a stale allow."""

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.checks import fast, service
from app.checks.decision import ConsentState, Policies, SubjectFacts, decide
from app.checks.fast import HotPath
from app.checks.router import answer
from app.checks.schemas import CheckResponse
from tests.api.test_rules import CAMERA, GUARDIAN, publish
from tests.factories import KEYS, NECESSARY, OPTIONAL, OPTIONAL_2, auth, check, set_consent

ADMIN = auth(KEYS["admin"])
PAIRS = [OPTIONAL, OPTIONAL_2, NECESSARY, CAMERA, ("permission.location", "app_features")]


async def both(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str, device_id: str | None = None
) -> list[dict[str, Any]]:
    """The route's decisions, after asserting the ORM path gives the same, and the single check
    each pair's (on SQLite a statement of the shape of its one pair: app.checks.fast.sqlite_lookup)."""
    body: dict[str, Any] = {
        "subject_id": subject_id,
        "items": [{"target": t, "purpose": p} for t, p in PAIRS],
    }
    if device_id:
        body["device_id"] = device_id
    response = await client.post("/v1/checks", json=body)
    assert response.status_code == 200, response.text
    CheckResponse.model_validate_json(response.content)  # the documented shape
    fast = response.json()["decisions"]
    catalogue, settings = app.state.catalogue, app.state.settings
    async with app.state.database.read_sessions() as session, session.begin():
        slow = await service.check(
            session, settings, subject_id, [catalogue.pairs[p] for p in PAIRS], device_id
        )
    assert fast == json.loads(answer(subject_id, slow))["decisions"]
    for (target, purpose), decision in zip(PAIRS, fast, strict=True):
        query = {"subject_id": subject_id, "target": target, "purpose": purpose}
        one = await client.get(
            "/v1/checks", params={**query, **({"device_id": device_id} if device_id else {})}
        )
        assert one.status_code == 200, one.text
        assert one.json()["decisions"] == [decision]
    decisions: list[dict[str, Any]] = fast
    return decisions


async def test_the_hot_path_decides_as_the_orm_path_in_every_state(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    reasons = set()

    async def record(sid: str, device: str | None = None) -> None:
        reasons.update(d["reason"] for d in await both(app, client, sid, device))

    await record("nobody-at-all")  # unknown subject
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await set_consent(client, subject_id, *OPTIONAL_2, "given", expires_at="2099-01-01T00:00:00Z")
    await set_consent(client, subject_id, *CAMERA, "given")
    await record(subject_id)
    observed = await client.put(
        f"/v1/subjects/{subject_id}/devices/phone-1/permissions/{CAMERA[0]}",
        json={"platform": "android", "native_value": "PERMISSION_DENIED", "state": "denied"},
    )
    assert observed.status_code == 200, observed.text
    await record(subject_id, "phone-1")
    await record(subject_id, "another-phone")
    await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
    await set_consent(client, subject_id, *OPTIONAL_2, "refused")
    await record(subject_id)

    child = f"{subject_id}-child"
    await set_consent(client, child, *OPTIONAL, "given")
    await client.put(f"/v1/subjects/{child}", json={"birth_year": 2018})  # revoked
    await record(child)
    assert (await client.post(f"/v1/subjects/{child}/guardian-consents", json=GUARDIAN)).is_success
    await set_consent(client, child, *OPTIONAL, "given")
    await record(child)

    renew = f"{subject_id}-renew"
    await set_consent(client, renew, *OPTIONAL, "given")
    await publish(client, "2026-12", material=True, affected_purposes=[OPTIONAL[1]])
    await record(renew)

    gone = f"{subject_id}-gone"
    await set_consent(client, gone, *OPTIONAL, "given")
    assert (await client.post(f"/v1/subjects/{gone}/cancellation", json={})).is_success
    await record(gone)
    assert {
        "consent_given", "not_asked", "necessary", "os_denied", "withdrawn", "refused",
        "revoked", "account_cancelled", "reconsent_required",
    } <= reasons  # fmt: skip


async def test_a_batch_of_one_target_or_one_purpose_reads_every_pair(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    """SQLite's statement takes as many values as the request has targets and purposes: one
    target with two purposes, or two targets with one purpose, reads every pair."""
    given = [OPTIONAL, ("gender", "new_product_development"), OPTIONAL_2]
    for target, purpose in given:
        await set_consent(client, subject_id, target, purpose, "given")
    for items in (given[:2], [given[0], given[2]]):
        body = {"subject_id": subject_id, "items": [{"target": t, "purpose": p} for t, p in items]}
        response = await client.post("/v1/checks", json=body)
        assert response.status_code == 200, response.text
        assert [d["reason"] for d in response.json()["decisions"]] == ["consent_given"] * 2


async def test_a_wide_batch_decides_as_the_orm_path(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    """A batch whose targets and purposes make more probes of the consents' key than
    fast.RANGE_ABOVE reads the subject's consents as one range on SQLite: only the subject's,
    only the pairs asked, each in its own state."""
    catalogue = app.state.catalogue
    pairs = [pair for pair in catalogue.pairs.values() if not pair.necessary][:40]
    keys = [pair.key for pair in pairs]
    targets, purposes = {t for t, _ in keys}, {p for _, p in keys}
    assert len(targets) * len(purposes) > fast.RANGE_ABOVE
    # Not asked, though its target and its purpose are: it must not be read as an asked pair's.
    not_in_batch = next(
        key
        for key in catalogue.pairs
        if key not in keys and key[0] in targets and key[1] in purposes
    )
    states = {keys[0]: "given", keys[7]: "withdrawn", keys[21]: "refused", keys[-1]: "given"}
    prompt = {"prompt_id": "hot-path-test"}  # a dedicated prompt, for the sensitive pairs
    await set_consent(client, subject_id, *keys[7], "given", evidence=prompt)  # then withdrawn
    for (target, purpose), state in {**states, not_in_batch: "given"}.items():
        await set_consent(client, subject_id, target, purpose, state, evidence=prompt)
    for target, purpose in keys[1:7]:  # another subject's consents are not this one's
        await set_consent(client, f"{subject_id}-other", target, purpose, "given", evidence=prompt)
    body = {"subject_id": subject_id, "items": [{"target": t, "purpose": p} for t, p in keys]}
    response = await client.post("/v1/checks", json=body)
    assert response.status_code == 200, response.text
    decisions = response.json()["decisions"]
    async with app.state.database.read_sessions() as session, session.begin():
        slow = await service.check(session, app.state.settings, subject_id, pairs)
    assert decisions == json.loads(answer(subject_id, slow))["decisions"]
    expected = {"given": "consent_given", "withdrawn": "withdrawn", "refused": "refused"}
    assert [d["reason"] for d in decisions] == [
        expected[states[key]] if key in states else "not_asked" for key in keys
    ]


async def test_a_check_naming_no_device_reads_no_os_state(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str, backend: str
) -> None:
    """On SQLite a check that names no device has no subquery of the OS observations in its
    statement (it probed their key once for every target, for nothing); one that names a
    device reads them."""
    if backend != "sqlite":
        pytest.skip("SQLite's statement")
    await set_consent(client, subject_id, *CAMERA, "given")
    await check(client, subject_id, *OPTIONAL)  # the hot path's connections are open
    read: set[str] = set()

    def authorizer(action: int, table: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table:
            read.add(table)
        return sqlite3.SQLITE_OK

    direct: sqlite3.Connection = app.state.hot_path._direct
    direct.set_authorizer(authorizer)  # statements are prepared again, through it
    try:
        items = [{"target": t, "purpose": p} for t, p in PAIRS]
        for device in ({}, {"device_id": "phone-1"}):
            read.clear()
            one = await client.get(
                "/v1/checks",
                params={"subject_id": subject_id, "target": CAMERA[0], "purpose": CAMERA[1]}
                | device,
            )
            assert one.status_code == 200, one.text
            batch = await client.post(
                "/v1/checks", json={"subject_id": subject_id, "items": items} | device
            )
            assert batch.status_code == 200, batch.text
            assert "consent" in read
            assert ("permission_observation" in read) is bool(device)
            reasons = [one.json()["decisions"][0]["reason"], batch.json()["decisions"][3]["reason"]]
            assert reasons == ["os_denied" if device else "consent_given"] * 2
    finally:
        direct.set_authorizer(None)


async def test_a_new_material_policy_is_seen_by_the_very_next_check(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True  # policies cached
    await publish(client, "2027-01", material=True, affected_purposes=[OPTIONAL[1]])
    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["allowed"], decision["reason"]) == (False, "reconsent_required")


async def test_a_revoked_key_is_refused_by_the_very_next_check(
    anonymous: httpx.AsyncClient, subject_id: str
) -> None:
    created = await anonymous.post("/v1/keys", json={"name": "app-2", "role": "app"}, headers=ADMIN)
    key = created.json()["key"]
    params = {"subject_id": subject_id, "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
    assert (await anonymous.get("/v1/checks", params=params, headers=auth(key))).status_code == 200
    assert (await anonymous.post("/v1/keys/app-2/revocation", headers=ADMIN)).is_success
    refused = await anonymous.get("/v1/checks", params=params, headers=auth(key))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    wrong = await anonymous.get("/v1/checks", params=params, headers=auth(KEYS["app"] + "x"))
    assert wrong.status_code == 401
    staff = await anonymous.get("/v1/checks", params=params, headers=auth(KEYS["auditor"]))
    assert staff.status_code == 403
    assert staff.json()["missing_scope"] == "checks:run"


async def test_connections_the_server_dropped_cost_at_most_a_503(
    app: FastAPI, client: httpx.AsyncClient, backend: str, subject_id: str
) -> None:
    """A restart or fail-over closes pooled connections: never a 500, and the next check works."""
    if backend != "postgresql":
        return  # SQLite has no server to drop them
    from sqlalchemy import text

    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "not_asked"
    async with app.state.database.engine.connect() as connection:
        await connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    params = {"subject_id": subject_id, "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
    statuses = [(await client.get("/v1/checks", params=params)).status_code for _ in range(12)]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[-1] == 200


class _Failing:
    """A connection on which every statement fails with SQLite's error ``code``."""

    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message

    def execute(self, *_args: Any) -> Any:
        error = sqlite3.OperationalError(self.message)
        error.sqlite_errorcode = self.code  # as sqlite3 sets it
        raise error

    def close(self) -> None:
        pass


async def test_a_busy_sqlite_database_sends_the_lookup_to_a_waiting_connection(
    app: FastAPI,
    client: httpx.AsyncClient,
    backend: str,
    subject_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite's lookup runs on the event loop's thread and never waits there: a busy database
    moves it to a threaded connection (same answer, as fresh); any other error is a 503."""
    if backend != "sqlite":
        return
    await set_consent(client, subject_id, *OPTIONAL, "given")
    assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True
    hot = app.state.hot_path
    busy = _Failing(sqlite3.SQLITE_BUSY_RECOVERY, "database is locked")  # an extended code
    monkeypatch.setattr(hot, "_direct", busy)
    await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["allowed"], decision["state"]) == (False, "withdrawn")
    await set_consent(client, subject_id, *OPTIONAL_2, "given")  # and a batch's statement
    items = [{"target": t, "purpose": p} for t, p in (OPTIONAL, OPTIONAL_2)]
    batch = await client.post("/v1/checks", json={"subject_id": subject_id, "items": items})
    assert batch.status_code == 200, batch.text
    assert [d["state"] for d in batch.json()["decisions"]] == ["withdrawn", "given"]
    monkeypatch.setattr(hot, "_direct", _Failing(sqlite3.SQLITE_IOERR, "disk I/O error"))
    params = {"subject_id": subject_id, "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
    failed = await client.get("/v1/checks", params=params)
    assert failed.status_code == 503, failed.text
    assert failed.headers["content-type"] == "application/problem+json"


async def test_every_way_of_stating_an_age_reads_the_same(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    """Dates, stated ages and an erased child's child_until come back from the driver as the ORM
    reads them (on SQLite: text, parsed here)."""
    for n, attributes in enumerate(
        ({"birth_date": "2016-03-04"}, {"age": 9}, {"birth_date": "1990-01-01"}, {"age": 40})
    ):
        sid = f"{subject_id}-{n}"
        await set_consent(client, sid, *OPTIONAL, "given")
        assert (await client.put(f"/v1/subjects/{sid}", json=attributes)).is_success
        await both(app, client, sid)
    erased = f"{subject_id}-0"
    assert (await client.post(f"/v1/subjects/{erased}/cancellation", json={})).is_success
    await both(app, client, erased)


async def test_the_database_url_options_reach_the_driver(
    app: FastAPI, database_url: str, backend: str, subject_id: str
) -> None:
    """TLS and other connection options in DATABASE_URL apply to the check's own pool too."""
    if backend != "postgresql":
        return
    from app.checks.fast import HotPath
    from app.core.db import Database

    settings = app.state.settings.model_copy(update={"database_url": database_url + "?ssl=disable"})
    database = Database(settings)
    hot = HotPath(settings, database)
    try:
        found = await hot.lookup("0" * 64, subject_id, [OPTIONAL], None)
        assert found.key is None
    finally:
        await hot.close()
        await database.dispose()


async def test_the_single_check_validates_its_query_as_declared(
    served: str, client: httpx.AsyncClient
) -> None:
    """GET /v1/checks reads its query itself (BENCHMARKS.md): same rules, same errors."""
    missing = await client.get("/v1/checks", params={"subject_id": "s", "target": "gender"})
    assert missing.status_code == 422
    assert missing.json()["errors"] == [
        {"loc": ["query", "purpose"], "msg": "Field required", "type": "missing"}
    ]
    bad = await client.get(
        "/v1/checks",
        params={"subject_id": "a\x07b", "target": "", "purpose": "x" * 65, "device_id": ""},
    )
    assert bad.status_code == 422
    assert [e["loc"] for e in bad.json()["errors"]] == [
        ["query", "subject_id"],
        ["query", "target"],
        ["query", "purpose"],
        ["query", "device_id"],
    ]
    unknown = await client.get(
        "/v1/checks", params={"subject_id": "s", "target": "gender", "purpose": "nope"}
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["loc"][0] == "query"
    anonymous = await client.get(
        "/v1/checks", params={"subject_id": "s"}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401  # the credential before the query, as on every route


async def test_the_batch_check_reads_its_body_as_fastapi_would(
    served: str, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    """POST /v1/checks reads its body itself (BENCHMARKS.md): same order, same errors."""
    json_type = {"content-type": "application/json"}
    malformed = await anonymous.post("/v1/checks", content=b'{"subject_id": ', headers=json_type)
    assert malformed.status_code == 400  # the body's JSON before the credential
    assert malformed.json()["type"].endswith("malformed-json")
    assert (await anonymous.post("/v1/checks", json={})).status_code == 401
    empty = await client.post("/v1/checks")
    assert empty.status_code == 422
    assert empty.json()["errors"][0]["loc"] == ["body"]
    as_text = await client.post(
        "/v1/checks",
        content=b'{"subject_id": "s", "items": []}',
        headers={"content-type": "text/plain"},
    )
    assert as_text.status_code == 422
    invalid = await client.post(
        "/v1/checks", json={"subject_id": "s", "items": [{"target": "gender"}], "extra": 1}
    )
    assert invalid.status_code == 422
    assert sorted(e["loc"] for e in invalid.json()["errors"]) == [
        ["body", "extra"],
        ["body", "items", 0, "purpose"],
    ]
    typed = await client.post(
        "/v1/checks",
        content=b'{"subject_id": "s", "items": [{"target": "gender", "purpose": "service_improvement"}]}',
        headers={"content-type": "application/merge-patch+json; charset=utf-8"},
    )
    assert typed.status_code == 200, typed.text


def test_the_checks_body_has_the_documented_shape_and_the_apis_one_form_of_an_instant(
    app: FastAPI,
) -> None:
    """The check serialises its decisions as they are (``answer``), not through CheckResponse:
    it must still be CheckResponse, field for field and in its order, with every instant as
    the API writes them."""
    pairs = app.state.catalogue.pairs
    now = datetime(2026, 6, 1, tzinfo=UTC)
    refused = ConsentState("refused", uuid.uuid4(), "2022-02", now, None)  # a whole second
    decisions = [
        decide(pairs[pair], stored, subject=SubjectFacts(), policies=Policies(), at=now)
        for pair, stored in ((CAMERA, refused), (OPTIONAL, None), (NECESSARY, None))
    ]
    body = answer("subject-1", decisions)
    assert body == CheckResponse.model_validate_json(body).model_dump_json().encode()
    first = json.loads(body)["decisions"][0]
    assert first["next_prompt_after"] == "2026-06-03T00:00:00.000000Z"
    assert first["event_id"] == str(refused.event_id)


class _Clock:
    """``time`` as app.checks.fast reads it, moved on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def _serving(app: FastAPI, hot: HotPath) -> AsyncIterator[None]:
    """``hot`` answers the app's requests meanwhile, and is closed after."""
    working, app.state.hot_path = app.state.hot_path, hot
    try:
        yield
    finally:
        app.state.hot_path = working
        await hot.close()


async def test_after_a_failure_to_open_checks_get_a_503_at_once_until_retry_after(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first check finds the database out of reach: a 503. The checks queued meanwhile and
    those of the next Retry-After get the same 503 without trying again; after it, one does."""
    hot = HotPath(app.state.settings, app.state.database)
    opened: list[bool] = []
    down = True
    open_for_real = hot._open

    async def attempt() -> None:
        opened.append(not down)
        if down:
            await asyncio.sleep(0.05)  # the other checks queue up meanwhile
            raise ConnectionRefusedError(111, "Connection refused")
        await open_for_real()

    clock = _Clock()
    monkeypatch.setattr(hot, "_open", attempt)
    monkeypatch.setattr(fast, "time", clock)
    params = {"subject_id": "u", "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
    async with _serving(app, hot):
        responses = await asyncio.gather(
            *[client.get("/v1/checks", params=params) for _ in range(5)]
        )
        assert [r.status_code for r in responses] == [503] * 5
        assert all(r.json()["type"].endswith("database-unavailable") for r in responses)
        assert responses[0].headers["retry-after"] == "1"
        assert opened == [False]  # one attempt for the five
        down = False
        clock.now += fast.RETRY_SECONDS - 0.01
        assert (await client.get("/v1/checks", params=params)).status_code == 503
        assert opened == [False]  # still within Retry-After
        clock.now += 0.01
        assert (await client.get("/v1/checks", params=params)).status_code == 200
        assert opened == [False, True]


TRACED = "hot-path-under-test"


def _traced(options: dict[str, Any]) -> dict[str, Any]:
    """A pool's options, its connections named so that they can be counted apart."""
    settings = {**options.get("server_settings", {}), "application_name": TRACED}
    return {**options, "server_settings": settings}


async def _none_left(app: FastAPI) -> None:
    """No connection of the traced pools is left on the server (pg_stat_activity is read once
    per transaction: a new one each time; a connection closed on this side ends there soon)."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
    for _ in range(100):
        async with app.state.database.engine.connect() as connection:
            left = (await connection.execute(query, {"name": TRACED})).scalar_one()
        if left == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{left} connections left open")


async def test_a_hot_path_closed_while_it_opens_leaves_no_connection_open(
    app: FastAPI, client: httpx.AsyncClient, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown while a request opens the connections: the request gets a 503, and what it
    opened is closed; requests after it get a 503 and open nothing."""
    if backend != "postgresql":
        pytest.skip("the pools are PostgreSQL's")
    hot = HotPath(app.state.settings, app.state.database)
    create_pool = fast.asyncpg.create_pool
    go = asyncio.Event()
    created: list[Any] = []

    async def held(**options: Any) -> Any:
        pool = await create_pool(**_traced(options))
        created.append(pool)
        await go.wait()
        return pool

    monkeypatch.setattr(fast.asyncpg, "create_pool", held)
    params = {"subject_id": "u", "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
    async with _serving(app, hot):
        opening = asyncio.ensure_future(client.get("/v1/checks", params=params))
        while not created:
            await asyncio.sleep(0.01)
        await hot.close()
        go.set()
        assert (await opening).status_code == 503
        after = await client.get("/v1/checks", params=params)
        assert after.status_code == 503, after.text
        assert "shutting down" in after.json()["detail"]
        [pool] = created  # and none opened after
        assert pool.is_closing()
        await _none_left(app)


async def test_a_failure_to_open_on_sqlite_leaves_nothing_open(
    app: FastAPI, client: httpx.AsyncClient, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of the threaded connections cannot be opened: a 503, and the first (with its
    thread) is closed, not left behind for the next attempt to add to."""
    if backend != "sqlite":
        pytest.skip("the threaded connections are SQLite's")
    import aiosqlite

    connect = aiosqlite.connect
    opened: list[Any] = []

    def second_fails(*args: Any, **kwargs: Any) -> Any:
        if opened:
            raise sqlite3.OperationalError("unable to open database file")
        opened.append(connect(*args, **kwargs))
        return opened[0]

    monkeypatch.setattr(aiosqlite, "connect", second_fails)
    params = {"subject_id": "u", "target": OPTIONAL[0], "purpose": OPTIONAL[1]}
    async with _serving(app, HotPath(app.state.settings, app.state.database)):
        response = await client.get("/v1/checks", params=params)
        assert response.status_code == 503, response.text
        [first] = opened
        assert first._connection is None  # closed, and its thread stopped
        assert not first._running
