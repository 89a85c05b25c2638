"""Consent changes on the driver (app.consents.fast). On PostgreSQL a change is read and planned
without a lock and written only if the subject's row is still the version read; these tests put
another writer in between and check that the change is then planned again on what that writer
left, as if it had come second. (On SQLite the write lock is held from the read to the commit, so
nothing can come in between; the changes queued meanwhile are written together, in one transaction
with a savepoint each, and committed once: the tests at the end.)"""

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
from app.core import driver
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
    other_writer = sqlite3.connect(
        settings.database_url.split(":///", 1)[1], isolation_level=None, check_same_thread=False
    )
    # waited for off the loop: a write of the app's own (a key's use, noted) may hold it now
    await asyncio.to_thread(other_writer.execute, "BEGIN IMMEDIATE")
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
    other_writer = sqlite3.connect(
        settings.database_url.split(":///", 1)[1], isolation_level=None, check_same_thread=False
    )
    # waited for off the loop: a write of the app's own (a key's use, noted) may hold it now
    await asyncio.to_thread(other_writer.execute, "BEGIN IMMEDIATE")
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
    assert handed == ["_begin_waiting", "_commit"]  # the lock waited for on the thread
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "withdrawn"
    assert len(await all_events(client, subject_id)) == 2


# --- SQLite: group commit --------------------------------------------------------------------


class Held:
    """The SQLite writer's commits, held until ``release`` is set, and counted; ``fail`` makes the
    n-th fail as a full disk would."""

    def __init__(self, writer: SqliteWriter) -> None:
        self.writer = writer
        self.release, self.entered = threading.Event(), threading.Event()
        self.commits: list[int] = []
        self.fail: int | None = None

    def commit(self, connection: sqlite3.Connection) -> None:
        self.entered.set()
        assert self.release.wait(60), "the test did not let the commit go"
        self.commits.append(1)
        if len(self.commits) == self.fail:
            raise sqlite3.OperationalError("database or disk is full")
        connection.execute("COMMIT")

    async def until(self, done: Callable[[], bool]) -> None:
        for _ in range(3000):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the writer did not get there in 30 s")

    async def group(
        self, first: Awaitable[httpx.Response], *rest: Awaitable[httpx.Response]
    ) -> list[httpx.Response]:
        """``first`` sent and held in its commit, ``rest`` sent and queued behind it in order, then
        the commit let go: ``rest`` is written as one group."""
        started = asyncio.ensure_future(first)
        await self.until(self.entered.is_set)
        queued = []
        for request in rest:
            queued.append(asyncio.ensure_future(request))
            await self.until(lambda: len(self.writer._queue) == len(queued))
        self.release.set()
        return [await started, *[await q for q in queued]]


@pytest.fixture
async def held(backend: str, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Held:
    if backend != "sqlite":
        pytest.skip("group commit is the SQLite writer's")
    found = Held(await app.state.hot_path.sqlite_writer())
    monkeypatch.setattr(driver, "_commit", found.commit)
    return found


async def _unknown(client: httpx.AsyncClient, subject_id: str) -> bool:
    """Nothing of the subject was written: not even its row."""
    response = await client.get(f"/v1/subjects/{subject_id}/events")
    return response.status_code == 404


def _give(client: httpx.AsyncClient, subject_id: str, **headers: str) -> Awaitable[httpx.Response]:
    return client.put(_url(subject_id, OPTIONAL), json={"state": "given"}, headers=headers)


async def test_changes_queued_during_a_commit_are_committed_together(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    others = [f"{subject_id}-{i}" for i in range(5)]
    responses = await held.group(
        _give(client, subject_id),
        *[_give(client, other) for other in others],
        # the same subject twice in one group: the second links to the first
        client.put(_url(subject_id, OPTIONAL_2), json={"state": "given"}),
        client.put(_url(subject_id, OPTIONAL), json={"state": "withdrawn"}),
    )
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert len(held.commits) == 2  # the first alone, then the seven queued behind it
    for other in others:
        assert (await check(client, other, *OPTIONAL))["allowed"] is True
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "withdrawn"
    events = await all_events(client, subject_id)
    assert [e["state"] for e in events] == ["given", "given", "withdrawn"]
    recompute(events)


async def test_a_change_that_fails_in_a_group_is_undone_alone(
    client: httpx.AsyncClient, subject_id: str, held: Held, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that raises after all its writes, between two others of its group: its
    savepoint is rolled back and its caller gets the error; the others are committed."""
    failing = f"{subject_id}-fails"
    store = fast._Sqlite._store

    def written_then_fail(self: Any, connection: sqlite3.Connection, stored: Any) -> None:
        store(self, connection, stored)  # every row written...
        if self.subject_id == failing:
            raise sqlite3.OperationalError("disk I/O error")  # ... and then a failure

    monkeypatch.setattr(fast._Sqlite, "_store", written_then_fail)
    responses = await held.group(
        _give(client, subject_id),
        _give(client, f"{subject_id}-before"),
        _give(client, failing),
        _give(client, f"{subject_id}-after"),
    )
    assert [r.status_code for r in responses] == [200, 200, 503, 200]
    assert responses[2].headers["content-type"] == "application/problem+json"
    assert len(held.commits) == 2
    assert await _unknown(client, failing)
    assert (await check(client, failing, *OPTIONAL))["allowed"] is False
    for written in ("before", "after"):
        assert (await check(client, f"{subject_id}-{written}", *OPTIONAL))["allowed"] is True


async def test_a_failure_that_undoes_the_whole_transaction_fails_the_changes_before_it(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    """An error after which SQLite has rolled the whole transaction back (as on a full disk; here
    a trigger's RAISE(ROLLBACK)): the group's changes before it were undone with it, and their
    callers get a 503 to retry; the changes after it start a new transaction."""
    failing = f"{subject_id}-fails"
    held.writer._open().execute(
        "CREATE TEMP TRIGGER undo_all BEFORE INSERT ON consent_event "
        f"WHEN NEW.subject_id = '{failing}' BEGIN SELECT RAISE(ROLLBACK, 'undone'); END"
    )
    responses = await held.group(
        _give(client, subject_id),
        _give(client, f"{subject_id}-before"),
        _give(client, failing),
        _give(client, f"{subject_id}-after"),
    )
    statuses = [r.status_code for r in responses]
    assert statuses[:2] == [200, 503], [r.text for r in responses]
    assert statuses[2] >= 500  # its own error
    assert statuses[3] == 200
    assert "retry-after" in responses[1].headers
    assert await _unknown(client, f"{subject_id}-before")
    assert await _unknown(client, failing)
    assert (await check(client, f"{subject_id}-after", *OPTIONAL))["allowed"] is True


async def test_a_failed_commit_fails_its_whole_group_and_writes_none_of_it(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    """Even the answers that rest on what the group wrote: a retry with the same Idempotency-Key,
    which read the first request's response in the same transaction, gets the 503 too."""
    held.fail = 2
    group = [f"{subject_id}-{i}" for i in range(3)]
    keyed = {"Idempotency-Key": f"retry-{subject_id}"}
    responses = await held.group(
        _give(client, subject_id),
        *[_give(client, s) for s in group],
        _give(client, group[0], **keyed),
        _give(client, group[0], **keyed),
    )
    assert [r.status_code for r in responses] == [200] + [503] * 5, [r.text for r in responses]
    assert all("retry-after" in r.headers for r in responses[1:])
    for failed in group:
        assert await _unknown(client, failed)
    held.fail = None
    await set_consent(client, group[0], *OPTIONAL, "given")  # the writer goes on
    assert (await check(client, group[0], *OPTIONAL))["allowed"] is True


async def test_refusals_and_replays_in_a_group_keep_their_own_answers(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    """Works that write nothing (a stranger's key, a replay of a committed response) answer as
    they would alone, and the group's other changes are written."""
    keyed = {"Idempotency-Key": f"once-{subject_id}"}
    held.release.set()
    first = await _give(client, subject_id, **keyed)
    assert first.status_code == 200
    held.release.clear()
    held.entered.clear()
    stranger = {"Authorization": "Bearer clk_" + "x" * 43}
    responses = await held.group(
        _give(client, f"{subject_id}-first"),
        _give(client, f"{subject_id}-stranger", **stranger),
        _give(client, subject_id, **keyed),
        _give(client, f"{subject_id}-stranger", **stranger),
        _give(client, f"{subject_id}-last"),
    )
    assert [r.status_code for r in responses] == [200, 401, 200, 401, 200]
    assert responses[2].json() == first.json()
    assert len(await all_events(client, subject_id)) == 1
    assert (await check(client, f"{subject_id}-last", *OPTIONAL))["allowed"] is True


async def test_a_change_cancelled_while_it_waits_in_the_queue_writes_nothing(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    first = asyncio.ensure_future(_give(client, subject_id))
    await held.until(held.entered.is_set)
    gone = f"{subject_id}-gone"
    waiting = asyncio.ensure_future(_give(client, gone))
    await held.until(lambda: len(held.writer._queue) == 1)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    held.release.set()
    assert (await first).status_code == 200
    await set_consent(client, subject_id, *OPTIONAL_2, "given")  # after the queue's turn
    assert await _unknown(client, gone)


async def test_a_retry_queued_in_the_same_group_replays_the_first(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    keyed = {"Idempotency-Key": f"retry-{subject_id}"}
    responses = await held.group(
        _give(client, f"{subject_id}-first"),
        _give(client, subject_id, **keyed),
        _give(client, subject_id, **keyed),
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert responses[1].json() == responses[2].json()
    assert len(held.commits) == 2
    assert len(await all_events(client, subject_id)) == 1


async def test_a_writer_cancelled_during_its_commit_answers_by_the_commit(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    """The writer's task cancelled (the loop closing) while its commit runs: the commit is seen
    through, and its callers are told it was written, not to retry (a retry would write the
    change twice)."""
    change = asyncio.ensure_future(_give(client, subject_id))
    await held.until(held.entered.is_set)
    writing = held.writer._writing
    assert writing is not None
    writing.cancel()
    await asyncio.sleep(0.05)
    assert not writing.done()  # waiting for its commit
    held.release.set()
    assert (await change).status_code == 200
    assert writing.cancelled()
    assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True
    await set_consent(client, subject_id, *OPTIONAL_2, "given")  # a new writer task


async def test_a_change_cancelled_while_it_commits_is_committed_and_the_writer_goes_on(
    client: httpx.AsyncClient, subject_id: str, held: Held
) -> None:
    """A request cancelled (twice) while its commit runs on the thread: the commit is the
    writer's, not the request's, and goes through; the next change finds no transaction open."""
    try:
        change = asyncio.ensure_future(_give(client, subject_id))
        await held.until(held.entered.is_set)
        change.cancel()
        await asyncio.sleep(0.05)
        change.cancel()
        await asyncio.sleep(0.05)
        assert held.writer._writing is not None
        assert not held.writer._writing.done()  # still committing
    finally:
        held.release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await change
    await set_consent(client, subject_id, *OPTIONAL_2, "given")  # no transaction left open
    assert len(await all_events(client, subject_id)) == 2  # the first commit went through
