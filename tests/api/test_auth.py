"""API keys, subject tokens and who the ledger says made each change."""

import asyncio
import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlmodel import select

from app.core.config import Settings
from app.core.security import mint_subject_token
from app.main import create_app
from app.models import ApiKey
from tests.factories import KEYS, OPTIONAL, TEST_SECRET, all_events, auth, set_consent

ADMIN = auth(KEYS["admin"])


async def _token(client: httpx.AsyncClient, subject_id: str) -> str:
    response = await client.post(f"/v1/subjects/{subject_id}/tokens")
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def test_a_new_key_is_shown_once_and_only_its_hash_is_stored(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    created = await client.post("/v1/keys", json={"name": "crm", "role": "auditor"}, headers=ADMIN)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("clk_")
    assert len(key) >= 40

    async with app.state.database.read_sessions() as session:
        stored = (await session.exec(select(ApiKey).where(ApiKey.name == "crm"))).one()
    columns = [str(getattr(stored, c)) for c in ApiKey.model_fields]
    assert key not in columns
    assert not any(key in value or value in key for value in columns if len(value) > 12)
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()

    listing = await client.get("/v1/keys", headers=ADMIN)
    assert listing.status_code == 200
    assert key not in listing.text
    [crm] = [k for k in listing.json()["items"] if k["name"] == "crm"]
    assert crm["role"] == "auditor"
    assert crm["revoked_at"] is None
    assert key.startswith(crm["prefix"])


async def test_a_key_records_when_it_was_last_used(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/keys", json={"name": "crm", "role": "auditor"}, headers=ADMIN)
    before = created.json()
    assert before["last_used_at"] is None
    assert (await client.get("/v1/catalogue", headers=auth(before["key"]))).status_code == 200
    for _ in range(100):  # recorded in the background, so that no request waits for it
        keys = (await client.get("/v1/keys", headers=ADMIN)).json()["items"]
        [after] = [k for k in keys if k["name"] == "crm"]
        if after["last_used_at"] is not None:
            break
        await asyncio.sleep(0.02)
    assert after["last_used_at"] is not None
    assert after["last_used_at"].endswith(":00.000000Z")  # to the minute


async def test_a_revoked_key_gets_401_at_once(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/keys", json={"name": "old", "role": "app"}, headers=ADMIN)
    key = auth(created.json()["key"])
    assert (await client.get("/v1/catalogue", headers=key)).status_code == 200
    revoked = await client.post("/v1/keys/old/revocation", headers=ADMIN)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"]
    response = await client.get("/v1/catalogue", headers=key)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "revoked" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    again = await client.post("/v1/keys/old/revocation", headers=ADMIN)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


async def test_key_names_are_never_reused_and_are_validated(client: httpx.AsyncClient) -> None:
    assert (
        await client.post("/v1/keys", json={"name": "a", "role": "app"}, headers=ADMIN)
    ).status_code == 201
    await client.post("/v1/keys/a/revocation", headers=ADMIN)
    again = await client.post("/v1/keys", json={"name": "a", "role": "auditor"}, headers=ADMIN)
    assert again.status_code == 409
    assert "never reused" in again.json()["detail"]
    bad = await client.post("/v1/keys", json={"name": "no spaces", "role": "root"}, headers=ADMIN)
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["errors"]} == {("body", "name"), ("body", "role")}
    missing = await client.post("/v1/keys/nobody/revocation", headers=ADMIN)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "needs a credential"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "needs a credential"),
        ({"Authorization": "Bearer clk_not-a-real-key"}, "not valid"),
        ({"Authorization": "Bearer not.a.token"}, "neither a valid API key"),
    ],
)
async def test_missing_or_wrong_credentials_get_401_problems(
    anonymous: httpx.AsyncClient, header: dict[str, str] | None, detail: str
) -> None:
    response = await anonymous.get("/v1/catalogue", headers=header)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


async def test_403_names_the_missing_scope(anonymous: httpx.AsyncClient, subject_id: str) -> None:
    response = await anonymous.put(
        f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}",
        json={"state": "given"},
        headers=auth(KEYS["auditor"]),
    )
    assert response.status_code == 403
    problem = response.json()
    assert problem["missing_scope"] == "consents:write"
    assert "consents:write" in problem["detail"]
    assert "auditor" in problem["detail"]


async def test_a_subject_token_reaches_only_its_own_subject(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, subject_id: str
) -> None:
    token = auth(await _token(client, subject_id))
    own = f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}"
    assert (await anonymous.put(own, json={"state": "given"}, headers=token)).status_code == 200
    assert (
        await anonymous.get(f"/v1/subjects/{subject_id}/consents", headers=token)
    ).status_code == 200

    other = "someone-else"
    await set_consent(client, other, *OPTIONAL, "given")  # exists, yet looks absent to the token
    for url in (f"/v1/subjects/{other}/consents", f"/v1/subjects/{other}/events"):
        response = await anonymous.get(url, headers=token)
        assert response.status_code == 404
        assert response.json()["detail"] == f"no subject {other!r}"
    nobody = await anonymous.get("/v1/subjects/nobody-at-all/consents", headers=token)
    assert nobody.status_code == 404
    assert nobody.json()["title"] == response.json()["title"]
    checks = await anonymous.get(
        "/v1/checks",
        params={"subject_id": subject_id, "target": OPTIONAL[0], "purpose": OPTIONAL[1]},
        headers=token,
    )
    assert checks.status_code == 403


async def test_the_ledger_names_the_credential_not_the_request_body(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    token = auth(await _token(client, subject_id))
    response = await anonymous.put(
        f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}",
        json={"state": "withdrawn", "actor": "admin", "actor_id": "someone"},
        headers=token,
    )
    assert response.status_code == 422  # unknown fields are refused, never trusted
    response = await anonymous.put(
        f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}",
        json={"state": "withdrawn"},
        headers=token,
    )
    assert response.status_code == 200
    by_app, by_subject = await all_events(client, subject_id)
    assert (by_app["actor"], by_app["actor_id"]) == ("app", "test-app")
    assert (by_subject["actor"], by_subject["actor_id"]) == ("subject", subject_id)


def _forge(token: str, **claims: object) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps(data | claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_tampered_expired_and_wrongly_signed_tokens_get_401(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, subject_id: str
) -> None:
    token = await _token(client, subject_id)
    await set_consent(client, subject_id, *OPTIONAL, "given")
    url = f"/v1/subjects/{subject_id}/consents"
    assert (await anonymous.get(url, headers=auth(token))).status_code == 200

    expired, _ = mint_subject_token(TEST_SECRET, subject_id, timedelta(seconds=-1), "test-app")
    wrong_key, _ = mint_subject_token(
        "another-key-" + "x1y2z3" * 8, subject_id, timedelta(minutes=5), "test-app"
    )
    unsigned = jwt.encode({"sub": subject_id}, key=None, algorithm="none")  # type: ignore[arg-type]
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    claims = {"sub": subject_id, "azp": "test-app", "exp": in_an_hour}
    other_audience = jwt.encode(claims | {"aud": "another-service"}, TEST_SECRET)
    no_audience = jwt.encode(claims, TEST_SECRET)
    unknown_issuer, _ = mint_subject_token(TEST_SECRET, subject_id, timedelta(minutes=5), "nobody")
    for bad, detail in (
        (other_audience, "neither"),
        (no_audience, "neither"),
        (unknown_issuer, "revoked"),
        (_forge(token, sub="someone-else"), "neither"),
        (_forge(token, exp=4102444800), "neither"),
        (token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), "neither"),
        (expired, "expired"),
        (wrong_key, "neither"),
        (unsigned, "neither"),
    ):
        response = await anonymous.get(url, headers=auth(bad))
        assert response.status_code == 401, bad
        assert detail in response.json()["detail"]


async def test_a_token_lives_as_long_as_configured(database_url: str, subject_id: str) -> None:
    app = create_app(
        Settings(database_url=database_url, secret_key=TEST_SECRET, subject_token_ttl_seconds=120)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=auth(KEYS["app"])
        ) as client:
            body = (await client.post(f"/v1/subjects/{subject_id}/tokens")).json()
    claims = jwt.decode(
        body["token"], TEST_SECRET, algorithms=["HS256"], audience="consent-ledger:subject"
    )
    assert claims["exp"] - claims["iat"] == 120
    assert body["subject_id"] == subject_id
    assert body["token_type"] == "Bearer"


async def test_private_docs_need_a_credential(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, secret_key=TEST_SECRET, public_docs=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/docs")).status_code == 404
            assert (await client.get("/openapi.json")).status_code == 401
            response = await client.get("/openapi.json", headers=auth(KEYS["auditor"]))
            assert response.status_code == 200
            assert "/v1/checks" in response.json()["paths"]
            assert (await client.get("/healthz")).status_code == 200


async def test_revoking_a_key_ends_the_subject_tokens_it_minted(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, subject_id: str
) -> None:
    created = await client.post(
        "/v1/keys", json={"name": "backend-2", "role": "app"}, headers=ADMIN
    )
    minted = await anonymous.post(
        f"/v1/subjects/{subject_id}/tokens", headers=auth(created.json()["key"])
    )
    token = auth(minted.json()["token"])
    url = f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}"
    assert (await anonymous.put(url, json={"state": "given"}, headers=token)).status_code == 200
    [event] = await all_events(client, subject_id)
    assert event["evidence"]["recorded_by"] == "app:backend-2"
    await client.post("/v1/keys/backend-2/revocation", headers=ADMIN)
    response = await anonymous.put(url, json={"state": "withdrawn"}, headers=token)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


async def test_a_token_for_a_255_character_subject_id_can_use_idempotency_keys(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    subject_id = "s" * 255
    token = auth(await _token(client, subject_id))
    url = f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}"
    headers = token | {"Idempotency-Key": "k-long"}
    first = await anonymous.put(url, json={"state": "given"}, headers=headers)
    again = await anonymous.put(url, json={"state": "given"}, headers=headers)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["idempotent-replayed"] == "true"


async def test_key_names_in_paths_are_validated(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/keys/a%00b/revocation", headers=ADMIN)
    assert response.status_code == 422
