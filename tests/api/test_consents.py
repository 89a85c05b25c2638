"""Reading and changing consents: listings, as_of, batches, expiry."""

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.factories import NECESSARY, OPTIONAL, OPTIONAL_2, all_events, check, set_consent


async def test_listing_shows_every_allowed_pair_with_state_and_decision(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    catalogue = (await client.get("/v1/catalogue")).json()
    expected_pairs = {(t, p["key"]) for p in catalogue["purposes"] for t in p["targets"]}

    response = await client.get(f"/v1/subjects/{subject_id}/consents")
    assert response.status_code == 200
    body = response.json()
    items = {(i["target"], i["purpose"]): i for i in body["items"]}
    assert set(items) == expected_pairs
    assert items[OPTIONAL]["state"] == "given"
    assert items[OPTIONAL]["allowed"] is True
    assert items[OPTIONAL_2]["state"] == "not_asked"
    assert items[OPTIONAL_2]["allowed"] is False
    assert items[NECESSARY]["reason"] == "necessary"
    assert items[NECESSARY]["allowed"] is True


async def test_listing_an_unknown_subject_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/subjects/nobody-here/consents")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_as_of_answers_before_between_and_after_changes(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await client.put(f"/v1/subjects/{subject_id}", json={})
    before = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await asyncio.sleep(0.01)
    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
    await asyncio.sleep(0.01)
    after = datetime.now(UTC)

    async def state_at(instant: datetime) -> dict[str, object]:
        response = await client.get(
            f"/v1/subjects/{subject_id}/consents", params={"as_of": instant.isoformat()}
        )
        assert response.status_code == 200, response.text
        [item] = [i for i in response.json()["items"] if (i["target"], i["purpose"]) == OPTIONAL]
        return item

    assert (await state_at(before))["state"] == "not_asked"
    assert (await state_at(between))["state"] == "given"
    assert (await state_at(between))["allowed"] is True
    assert (await state_at(after))["state"] == "withdrawn"
    assert (await state_at(after))["allowed"] is False


async def test_as_of_exactly_at_a_change_includes_it(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    given = await set_consent(client, subject_id, *OPTIONAL, "given")
    response = await client.get(
        f"/v1/subjects/{subject_id}/consents", params={"as_of": given["recorded_at"]}
    )
    [item] = [i for i in response.json()["items"] if (i["target"], i["purpose"]) == OPTIONAL]
    assert item["event_id"] == given["event_id"]


async def test_batch_writes_every_change_in_one_instant(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    response = await client.post(
        f"/v1/subjects/{subject_id}/consents",
        json={
            "changes": [
                {"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "given"},
                {"target": OPTIONAL_2[0], "purpose": OPTIONAL_2[1], "state": "refused"},
            ],
            "source": "onboarding",
        },
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(i["target"], i["state"]) for i in items] == [
        (OPTIONAL[0], "given"),
        (OPTIONAL_2[0], "refused"),
    ]
    events = await all_events(client, subject_id)
    assert [e["seq"] for e in events] == [1, 2]
    assert events[0]["recorded_at"] == events[1]["recorded_at"]


@pytest.mark.parametrize(
    ("bad_item", "status", "loc_field"),
    [
        (
            {"target": "no_such_target", "purpose": "service_improvement", "state": "given"},
            422,
            "target",
        ),
        ({"target": "gender", "purpose": "no_such_purpose", "state": "given"}, 422, "purpose"),
        ({"target": "permission.camera", "purpose": "usb_backup", "state": "given"}, 422, None),
        ({"target": "email", "purpose": "account_registration", "state": "given"}, 409, None),
        ({"target": "age", "purpose": "service_improvement", "state": "withdrawn"}, 409, None),
        ({"target": "age", "purpose": "service_improvement", "state": "maybe"}, 422, "state"),
    ],
)
async def test_one_bad_item_in_a_batch_writes_nothing_and_is_named(
    client: httpx.AsyncClient,
    subject_id: str,
    bad_item: dict[str, str],
    status: int,
    loc_field: str | None,
) -> None:
    await set_consent(client, subject_id, *OPTIONAL_2, "refused")
    response = await client.post(
        f"/v1/subjects/{subject_id}/consents",
        json={
            "changes": [{"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "given"}, bad_item]
        },
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["loc"][:3] == ["body", "changes", 1]
    if loc_field:
        assert error["loc"][3] == loc_field
    assert len(await all_events(client, subject_id)) == 1
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "not_asked"


async def test_a_batch_may_not_name_one_pair_twice(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    change = {"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "given"}
    response = await client.post(
        f"/v1/subjects/{subject_id}/consents", json={"changes": [change, change]}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "changes", 1]


async def test_withdrawing_a_consent_never_given_is_a_conflict(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "refused")
    response = await client.put(
        f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}",
        json={"state": "withdrawn"},
    )
    assert response.status_code == 409
    assert "refused" in response.json()["detail"]


async def test_a_consent_past_its_expiry_denies_as_expired(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    await set_consent(client, subject_id, *OPTIONAL, "given", expires_at=soon.isoformat())
    assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True
    await asyncio.sleep(0.4)
    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["allowed"], decision["reason"], decision["state"]) == (
        False,
        "expired",
        "expired",
    )


@pytest.mark.parametrize(
    "body",
    [
        {"state": "given", "expires_at": "2001-01-01T00:00:00Z"},
        {"state": "refused", "expires_at": "2999-01-01T00:00:00Z"},
        {"state": "given", "expires_at": "2999-01-01T00:00:00"},
    ],
)
async def test_bad_expiry_is_rejected(
    client: httpx.AsyncClient, subject_id: str, body: dict[str, str]
) -> None:
    response = await client.put(
        f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}", json=body
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][-1] == "expires_at"


async def test_a_write_names_a_policy_version_that_must_exist(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    response = await client.put(
        f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}",
        json={"state": "given", "policy_version": "1999-01"},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "policy_version"]
    given = await set_consent(client, subject_id, *OPTIONAL, "given", policy_version="2022-02")
    assert given["policy_version"] == "2022-02"


async def test_a_consent_write_creates_the_subject(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    response = await client.get(f"/v1/subjects/{subject_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "active"


async def test_events_are_paginated_oldest_first(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    for state in ("given", "withdrawn", "given", "withdrawn", "given"):
        await set_consent(client, subject_id, *OPTIONAL, state)
    seen = []
    cursor = None
    for _ in range(3):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"/v1/subjects/{subject_id}/events", params=params)).json()
        seen += [e["seq"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [1, 2, 3, 4, 5]
    assert cursor is None
