"""Idempotency-Key on writes."""

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from app.core.idempotency import purge_expired
from app.models import IdempotencyRecord
from tests.factories import OPTIONAL, OPTIONAL_2, all_events

# Every case against the hot paths as served and as FastAPI would serve them (conftest).
pytestmark = pytest.mark.usefixtures("served")


def _url(subject_id: str, pair: tuple[str, str] = OPTIONAL) -> str:
    return f"/v1/subjects/{subject_id}/consents/{pair[0]}/{pair[1]}"


async def test_a_retry_with_the_same_key_replays_and_writes_nothing(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await client.put(_url(subject_id), json={"state": "given"}, headers=headers)
    again = await client.put(_url(subject_id), json={"state": "given"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(await all_events(client, subject_id)) == 1


async def test_the_same_key_with_another_body_is_rejected(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    headers = {"Idempotency-Key": "k-2"}
    await client.put(_url(subject_id), json={"state": "given"}, headers=headers)
    response = await client.put(_url(subject_id), json={"state": "refused"}, headers=headers)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["detail"]
    other_path = await client.put(
        _url(subject_id, OPTIONAL_2), json={"state": "given"}, headers=headers
    )
    assert other_path.status_code == 422
    assert len(await all_events(client, subject_id)) == 1


async def test_concurrent_retries_with_one_key_write_once(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    headers = {"Idempotency-Key": "k-3"}
    responses = await asyncio.gather(
        *(client.put(_url(subject_id), json={"state": "given"}, headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["event_id"] for r in responses}) == 1
    assert len(await all_events(client, subject_id)) == 1


async def test_concurrent_retried_withdrawals_replay_instead_of_conflicting(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await client.put(_url(subject_id), json={"state": "given"})
    headers = {"Idempotency-Key": "k-withdraw"}
    responses = await asyncio.gather(
        *(
            client.put(_url(subject_id), json={"state": "withdrawn"}, headers=headers)
            for _ in range(6)
        )
    )
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.json()["event_id"] for r in responses}) == 1
    assert len(await all_events(client, subject_id)) == 2


async def test_a_failed_write_does_not_use_up_its_key(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    headers = {"Idempotency-Key": "k-4"}
    failed = await client.put(_url(subject_id), json={"state": "withdrawn"}, headers=headers)
    assert failed.status_code == 409
    await client.put(_url(subject_id), json={"state": "given"})
    retried = await client.put(_url(subject_id), json={"state": "withdrawn"}, headers=headers)
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers


async def test_batches_and_subject_writes_are_idempotent_too(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    headers = {"Idempotency-Key": "k-5"}
    body = {"changes": [{"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "given"}]}
    first = await client.post(f"/v1/subjects/{subject_id}/consents", json=body, headers=headers)
    again = await client.post(f"/v1/subjects/{subject_id}/consents", json=body, headers=headers)
    assert again.json() == first.json()
    assert len(await all_events(client, subject_id)) == 1

    created = await client.put(
        f"/v1/subjects/{subject_id}-b",
        json={"birth_year": 1990},
        headers=headers | {"Idempotency-Key": "k-6"},
    )
    replayed = await client.put(
        f"/v1/subjects/{subject_id}-b",
        json={"birth_year": 1990},
        headers=headers | {"Idempotency-Key": "k-6"},
    )
    assert created.status_code == replayed.status_code == 201


async def test_an_unusable_key_is_rejected(client: httpx.AsyncClient, subject_id: str) -> None:
    response = await client.put(
        _url(subject_id), json={"state": "given"}, headers={"Idempotency-Key": "x" * 256}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]


async def test_a_key_older_than_the_retention_is_forgotten(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    headers = {"Idempotency-Key": "k-old"}
    await client.put(_url(subject_id), json={"state": "given"}, headers=headers)
    async with app.state.database.write_sessions() as session, session.begin():
        record = await session.get(IdempotencyRecord, ("app:test-app", "k-old"))
        assert record is not None
        record.created_at = datetime.now(UTC) - timedelta(hours=25)
    # Past the retention the key is free again, even for another request.
    response = await client.put(_url(subject_id), json={"state": "withdrawn"}, headers=headers)
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers

    async with app.state.database.write_sessions() as session, session.begin():
        record = await session.get(IdempotencyRecord, ("app:test-app", "k-old"))
        assert record is not None
        record.created_at = datetime.now(UTC) - timedelta(hours=25)
    async with app.state.database.write_sessions() as session:
        assert await purge_expired(session, timedelta(hours=24)) == 1
