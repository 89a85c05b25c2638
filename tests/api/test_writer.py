"""Consent changes on the driver (app.consents.fast). On PostgreSQL a change is read and planned
without a lock and written only if the subject's row is still the version read; these tests put
another writer in between and check that the change is then planned again on what that writer
left, as if it had come second. (On SQLite the write lock is held from the read to the commit, so
nothing can come in between.)"""

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.consents import fast
from app.core.config import Settings
from app.core.driver import SqliteWriter
from tests.api.test_chain import recompute
from tests.factories import OPTIONAL, OPTIONAL_2, all_events, auth, check, set_consent


@pytest.fixture
def between(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[], Awaitable[None]]], list[int]]:
    """``between(work)``: run ``work`` once, after the next change was read and planned and before
    it is written. Returns a list that gets one item per write attempt."""
    if backend == "sqlite":
        pytest.skip("SQLite's write lock is held from the read to the commit")

    def install(work: Callable[[], Awaitable[None]]) -> list[int]:
        original = fast._Postgres._write
        attempts: list[int] = []
        inside = False  # the writes of ``work`` itself pass straight through

        async def interleaved(self: Any, connection: Any, stored: Any) -> bool:
            nonlocal inside
            if not inside:
                attempts.append(1)
                if len(attempts) == 1:
                    inside = True
                    try:
                        await work()
                    finally:
                        inside = False
            return await original(self, connection, stored)

        monkeypatch.setattr(fast._Postgres, "_write", interleaved)
        return attempts

    return install


def _url(subject_id: str, pair: tuple[str, str]) -> str:
    return f"/v1/subjects/{subject_id}/consents/{pair[0]}/{pair[1]}"


async def test_a_change_to_a_subject_cancelled_meanwhile_is_refused(
    client: httpx.AsyncClient, subject_id: str, between: Any
) -> None:
    await set_consent(client, subject_id, *OPTIONAL_2, "given")

    async def cancel() -> None:
        response = await client.post(f"/v1/subjects/{subject_id}/cancellation", json={})
        assert response.status_code == 200, response.text

    attempts = between(cancel)
    response = await client.put(_url(subject_id, OPTIONAL), json={"state": "given"})
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith("subject-cancelled")
    assert len(attempts) == 1  # planned again under the lock, and refused there

    events = await all_events(client, subject_id)
    recompute(events)
    assert [(e["target"], e["state"]) for e in events] == [
        (OPTIONAL_2[0], "given"),
        (OPTIONAL_2[0], "withdrawn"),  # by the cancellation; nothing of the refused change
    ]


async def test_a_withdrawal_of_a_consent_withdrawn_meanwhile_is_refused(
    client: httpx.AsyncClient, subject_id: str, between: Any
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")

    async def withdraw() -> None:
        await set_consent(client, subject_id, *OPTIONAL, "withdrawn")

    between(withdraw)
    response = await client.put(_url(subject_id, OPTIONAL), json={"state": "withdrawn"})
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith("nothing-to-withdraw")
    events = await all_events(client, subject_id)
    recompute(events)
    assert [e["state"] for e in events] == ["given", "withdrawn"]


async def test_a_change_after_another_one_meanwhile_links_to_it(
    client: httpx.AsyncClient, subject_id: str, between: Any
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")

    async def refuse_the_other() -> None:
        await set_consent(client, subject_id, *OPTIONAL_2, "refused")

    attempts = between(refuse_the_other)
    response = await client.put(_url(subject_id, OPTIONAL), json={"state": "withdrawn"})
    assert response.status_code == 200, response.text
    assert len(attempts) == 2  # the first write found the subject moved, the second held
    events = await all_events(client, subject_id)
    recompute(events)
    assert [(e["target"], e["state"], e["previous_state"]) for e in events] == [
        (OPTIONAL[0], "given", "not_asked"),
        (OPTIONAL_2[0], "refused", "not_asked"),
        (OPTIONAL[0], "withdrawn", "given"),
    ]
    listing = await client.get(f"/v1/subjects/{subject_id}/consents")
    states = {(i["target"], i["purpose"]): i["state"] for i in listing.json()["items"]}
    assert states[OPTIONAL] == "withdrawn"
    assert states[OPTIONAL_2] == "refused"


async def test_a_new_subject_created_meanwhile_is_written_once(
    client: httpx.AsyncClient, subject_id: str, between: Any
) -> None:
    async def first() -> None:
        await set_consent(client, subject_id, *OPTIONAL_2, "given")

    between(first)
    response = await client.put(_url(subject_id, OPTIONAL), json={"state": "given"})
    assert response.status_code == 200, response.text
    events = await all_events(client, subject_id)
    recompute(events)
    assert [e["target"] for e in events] == [OPTIONAL_2[0], OPTIONAL[0]]


async def test_an_idempotency_key_used_meanwhile_for_another_request_is_a_422(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str, between: Any
) -> None:
    key = {"Idempotency-Key": "k-race"}

    async def use_the_key() -> None:
        other = await client.put(
            _url(f"{subject_id}-other", OPTIONAL), json={"state": "given"}, headers=key
        )
        assert other.status_code == 200, other.text

    between(use_the_key)
    response = await client.put(_url(subject_id, OPTIONAL), json={"state": "given"}, headers=key)
    assert response.status_code == 422, response.text
    assert "already used" in response.json()["detail"]
    events = await client.get(f"/v1/subjects/{subject_id}/events")
    assert events.status_code == 404  # nothing written, not even the subject


async def test_a_retry_that_raced_the_first_request_replays_it(
    client: httpx.AsyncClient, subject_id: str, between: Any
) -> None:
    key = {"Idempotency-Key": "k-retry"}
    first: list[httpx.Response] = []

    async def the_first_request() -> None:
        first.append(
            await client.put(_url(subject_id, OPTIONAL), json={"state": "given"}, headers=key)
        )

    between(the_first_request)
    retry = await client.put(_url(subject_id, OPTIONAL), json={"state": "given"}, headers=key)
    assert first[0].status_code == retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first[0].json()
    assert len(await all_events(client, subject_id)) == 1


async def test_an_unknown_key_is_refused_without_taking_the_write_lock(
    backend: str, settings: Settings, client: httpx.AsyncClient, subject_id: str
) -> None:
    """On SQLite the write lock is the whole database's: a stranger must not get to hold it."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL takes no lock before the key is checked")
    other_writer = sqlite3.connect(settings.database_url.split(":///", 1)[1], isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    try:
        response = await asyncio.wait_for(
            client.put(
                _url(subject_id, OPTIONAL),
                json={"state": "given"},
                headers=auth("clk_" + "x" * 43),
            ),
            5,  # it would wait for the lock (the busy time-out is 30 s)
        )
        assert response.status_code == 401
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()


async def test_a_change_that_finds_the_database_busy_waits_for_it_without_holding_up_checks(
    backend: str,
    settings: Settings,
    client: httpx.AsyncClient,
    subject_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite: a change's statements run on the event loop's thread, and only its commit is
    handed to the writer's thread; a change that finds the write lock taken waits for it there,
    and the loop answers checks meanwhile."""
    if backend != "sqlite":
        pytest.skip("SQLite's write lock is the whole database's")
    handed: list[str] = []
    on_thread = SqliteWriter._on_thread

    def counted(self: SqliteWriter, work: Callable[[sqlite3.Connection], Any]) -> Any:
        handed.append(getattr(work, "__name__", "?"))
        return on_thread(self, work)

    monkeypatch.setattr(SqliteWriter, "_on_thread", counted)
    await set_consent(client, subject_id, *OPTIONAL, "given")
    assert handed == ["_commit"]  # the database free: nothing else left the loop's thread

    handed.clear()
    other_writer = sqlite3.connect(settings.database_url.split(":///", 1)[1], isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    change = asyncio.create_task(
        client.put(_url(subject_id, OPTIONAL), json={"state": "withdrawn"})
    )
    try:
        await asyncio.sleep(0.2)
        assert not change.done()  # waiting for the lock, on the thread
        decision = await asyncio.wait_for(check(client, subject_id, *OPTIONAL), 5)
        assert decision["allowed"] is True  # the loop answers meanwhile, from what is committed
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()
        response = await asyncio.wait_for(change, 10)
    assert response.status_code == 200, response.text
    assert handed == ["_read", "_commit"]  # read again on the thread, to wait there
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "withdrawn"
    assert len(await all_events(client, subject_id)) == 2


async def test_a_change_cancelled_while_it_commits_leaves_the_connection_idle(
    backend: str,
    app: FastAPI,
    client: httpx.AsyncClient,
    subject_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request cancelled (twice) while its commit runs on the thread: the lock is released
    only after the thread is done, so the next change finds no transaction open."""
    if backend != "sqlite":
        pytest.skip("the SQLite writer's thread")
    writer = await app.state.hot_path.sqlite_writer()
    release = threading.Event()

    def slow_commit(connection: sqlite3.Connection) -> None:
        release.wait(5)
        connection.execute("COMMIT")

    monkeypatch.setattr(fast, "_commit", slow_commit)
    try:
        change = asyncio.create_task(
            client.put(_url(subject_id, OPTIONAL), json={"state": "given"})
        )
        await asyncio.sleep(0.2)
        change.cancel()
        await asyncio.sleep(0.05)
        change.cancel()
        await asyncio.sleep(0.05)
        assert writer._lock.locked()  # still held: the commit has not finished
    finally:
        release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await change
    await set_consent(client, subject_id, *OPTIONAL_2, "given")  # no transaction left open
    assert len(await all_events(client, subject_id)) == 2  # the first commit went through
