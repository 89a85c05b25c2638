"""Small helpers that make requests the way the app would."""

import secrets
from typing import Any

import httpx

from app.core.security import ROLES, new_api_key

TEST_SECRET = secrets.token_urlsafe(48)  # a fresh signing secret for every test run
# One key per role, put in every test database. Tests call the API as the mobile app's backend
# (the ``client`` fixture) unless they ask for another caller.
KEYS: dict[str, str] = {role: new_api_key() for role in ROLES}
KEY_NAMES = {role: f"test-{role}" for role in ROLES}


def auth(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


# A consent-based pair and a contract-based, necessary one from the shipped catalogue.
OPTIONAL = ("gender", "service_improvement")
OPTIONAL_2 = ("device.model", "service_improvement")
NECESSARY = ("email", "account_registration")


async def set_consent(
    client: httpx.AsyncClient,
    subject_id: str,
    target: str,
    purpose: str,
    state: str,
    *,
    expect: int = 200,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> dict[str, Any]:
    response = await client.put(
        f"/v1/subjects/{subject_id}/consents/{target}/{purpose}",
        json={"state": state, **body},
        headers=headers,
    )
    assert response.status_code == expect, response.text
    data: dict[str, Any] = response.json()
    return data


async def check(
    client: httpx.AsyncClient, subject_id: str, target: str, purpose: str
) -> dict[str, Any]:
    response = await client.get(
        "/v1/checks", params={"subject_id": subject_id, "target": target, "purpose": purpose}
    )
    assert response.status_code == 200, response.text
    [decision] = response.json()["decisions"]
    result: dict[str, Any] = decision
    return result


async def all_events(client: httpx.AsyncClient, subject_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
        response = await client.get(f"/v1/subjects/{subject_id}/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        events.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return events
