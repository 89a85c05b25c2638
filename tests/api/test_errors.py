"""Bad input gets a problem+json that says what was wrong, and never a 500."""

import httpx
import pytest

from tests.factories import OPTIONAL

# Every case against the hot paths as served and as FastAPI would serve them (conftest).
pytestmark = pytest.mark.usefixtures("served")

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    assert body["detail"]
    return body


@pytest.mark.parametrize(
    ("path", "expected_detail"),
    [
        ("/v1/subjects/u1/consents/no_such_target/service_improvement", "unknown target"),
        ("/v1/subjects/u1/consents/gender/no_such_purpose", "unknown purpose"),
        ("/v1/subjects/u1/consents/permission.camera/usb_backup", "may not use"),
    ],
)
async def test_unknown_or_disallowed_pairs(
    client: httpx.AsyncClient, path: str, expected_detail: str
) -> None:
    body = assert_problem(await client.put(path, json={"state": "given"}), 422)
    assert expected_detail in str(body["detail"])


async def test_unknown_state(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.put(
            "/v1/subjects/u1/consents/gender/service_improvement", json={"state": "yes"}
        ),
        422,
    )
    assert body["errors"][0]["loc"] == ["body", "state"]  # type: ignore[index]


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/v1/subjects/u1/consents/gender/service_improvement",
        content=b'{"state": "given"',
        headers={"content-type": "application/json"},
    )
    body = assert_problem(response, 400)
    assert "JSON" in str(body["title"])


@pytest.mark.parametrize(
    "body",
    [
        {"state": 1},
        {"state": "given", "source": "somewhere"},
        {"state": "given", "evidence": {"prompt_id": 5}},
        {"state": "given", "evidence": "prompt"},
        {"state": "given", "unexpected": True},
        {"state": "given", "locale": "not a locale"},
        [],
    ],
)
async def test_wrong_types_and_unknown_fields(client: httpx.AsyncClient, body: object) -> None:
    assert_problem(
        await client.put("/v1/subjects/u1/consents/gender/service_improvement", json=body), 422
    )


@pytest.mark.parametrize(
    "subject_id", ["x" * 256, "bad%01id", "tab%09id", "del%7Fid", "%FF%FE", "%C0%C1"]
)
async def test_bad_subject_ids(client: httpx.AsyncClient, subject_id: str) -> None:
    assert_problem(
        await client.put(
            f"/v1/subjects/{subject_id}/consents/gender/service_improvement",
            json={"state": "given"},
        ),
        422,
    )
    assert_problem(await client.get(f"/v1/subjects/{subject_id}/consents"), 422)
    assert_problem(
        await client.get(
            "/v1/checks",
            params={
                "subject_id": subject_id.replace("%01", "\x01")
                .replace("%09", "\t")
                .replace("%7F", "\x7f")
                .replace("%FF%FE", "\ufffd")
                .replace("%C0%C1", "a\ufffdb"),
                "target": "gender",
                "purpose": "service_improvement",
            },
        ),
        422,
    )


async def test_a_255_character_unicode_subject_id_is_fine(client: httpx.AsyncClient) -> None:
    subject_id = "用户" + "x" * 253
    response = await client.put(
        f"/v1/subjects/{subject_id}/consents/gender/service_improvement", json={"state": "given"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:59-10:00", "0001-01-01T00:00:00+01:00"])
async def test_instants_out_of_range_are_422_not_500(
    client: httpx.AsyncClient, subject_id: str, expires_at: str
) -> None:
    body = assert_problem(
        await client.put(
            f"/v1/subjects/{subject_id}/consents/gender/service_improvement",
            json={"state": "given", "expires_at": expires_at},
        ),
        422,
    )
    assert body["errors"][0]["loc"] == ["body", "expires_at"]


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404)
    body = assert_problem(await client.delete("/v1/catalogue"), 405)
    assert "DELETE" in str(body["detail"])


@pytest.mark.parametrize(
    "params",
    [
        {"as_of": "yesterday"},
        {"as_of": "2026-01-01T00:00:00"},
        {"as_of": "0001-01-01T00:00:00+00:01"},
        {"as_of": "9999-12-31T23:59:59-10:00"},
        {"as_of": "1969-12-31T23:59:59Z"},
    ],
)
async def test_bad_as_of(
    client: httpx.AsyncClient, subject_id: str, params: dict[str, str]
) -> None:
    await client.put(f"/v1/subjects/{subject_id}", json={})
    assert_problem(await client.get(f"/v1/subjects/{subject_id}/consents", params=params), 422)


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "eyJzZXEiOiAiMSJ9", "e30", "eyJzZXEiOjk5OTk5OTk5OTk5OX0", "eyJzZXEiOi0xfQ"],
)
async def test_bad_cursor(client: httpx.AsyncClient, subject_id: str, cursor: str) -> None:
    await client.put(f"/v1/subjects/{subject_id}", json={})
    assert_problem(
        await client.get(f"/v1/subjects/{subject_id}/events", params={"cursor": cursor}), 422
    )


@pytest.mark.parametrize(
    "body",
    [
        {"subject_id": "u1", "items": []},
        {
            "subject_id": "u1",
            "items": [{"target": "gender", "purpose": "service_improvement"}] * 101,
        },
        {"subject_id": "", "items": [{"target": "gender", "purpose": "service_improvement"}]},
        {"items": [{"target": "gender", "purpose": "service_improvement"}]},
        {"subject_id": "u1", "items": [{"target": "gender"}]},
        {"subject_id": "u1", "items": ["gender"]},
        {"subject_id": "u1", "items": [None]},
        {"subject_id": "u1", "items": [{"target": "gender", "purpose": 7}]},
    ],
)
async def test_bad_check_requests(client: httpx.AsyncClient, body: object) -> None:
    assert_problem(await client.post("/v1/checks", json=body), 422)


async def test_a_check_names_the_bad_item(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/checks",
        json={
            "subject_id": "u1",
            "items": [
                {"target": OPTIONAL[0], "purpose": OPTIONAL[1]},
                {"target": "nope", "purpose": OPTIONAL[1]},
            ],
        },
    )
    body = assert_problem(response, 422)
    assert body["errors"][0]["loc"] == ["body", "items", 1, "target"]  # type: ignore[index]


async def test_a_check_item_with_a_key_of_its_own_is_refused(client: httpx.AsyncClient) -> None:
    """Items are closed objects: a misspelt or extra key is an error, not silently dropped."""
    item = {"target": OPTIONAL[0], "purpose": OPTIONAL[1], "device": "phone-1"}
    response = await client.post("/v1/checks", json={"subject_id": "u1", "items": [item]})
    body = assert_problem(response, 422)
    [error] = body["errors"]  # type: ignore[misc]
    assert (error["loc"], error["type"]) == (["body", "items", 0, "device"], "extra_forbidden")


@pytest.mark.parametrize(
    "body",
    [
        {"jurisdiction": "china"},
        {"birth_year": 1800},
        {"birth_year": 3000},
        {"status": "cancelled"},
    ],
)
async def test_bad_subject_attributes(
    client: httpx.AsyncClient, subject_id: str, body: object
) -> None:
    assert_problem(await client.put(f"/v1/subjects/{subject_id}", json=body), 422)
    assert (await client.get(f"/v1/subjects/{subject_id}")).status_code == 404
