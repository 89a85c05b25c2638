"""The rules the law asks for: policy versions and re-consent, children and guardians, separate
consent, expiry, and OS permission state, alone and in combination."""

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.catalogue.loader import Catalogue
from app.models import Subject
from tests.api.test_chain import recompute
from tests.factories import KEYS, OPTIONAL, all_events, auth, check, set_consent

OFFICER = auth(KEYS["officer"])
SENSITIVE = ("skin_condition", "skin_care")
LOCATION = ("permission.location", "app_features")
CAMERA = ("permission.camera", "app_features")
GUARDIAN = {
    "guardian_ref": "guardian-77",
    "relationship": "parent",
    "verification_method": "id_document",
    "evidence_ref": "vault://kyc/77",
    "verifier": "kyc-service",
}
PROMPT = {"prompt_id": "skin-care-dedicated-v1"}


async def publish(
    client: httpx.AsyncClient, version: str, *, expect: int = 201, **body: Any
) -> dict[str, Any]:
    body = {"version": version, "text": f"Policy {version}.", "summary": "Changes."} | body
    response = await client.post("/v1/policies", json=body, headers=OFFICER)
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json()
    return result


async def consents(client: httpx.AsyncClient, subject_id: str, **params: str) -> dict[str, Any]:
    response = await client.get(f"/v1/subjects/{subject_id}/consents", params=params)
    assert response.status_code == 200, response.text
    return {(c["target"], c["purpose"]): c for c in response.json()["items"]}


# --- policy versions -----------------------------------------------------------------------------


async def test_published_versions_are_archived_and_never_change(client: httpx.AsyncClient) -> None:
    created = await publish(client, "2026-11", summary="Adds cross-border transfer detail.")
    assert created["current"] is True
    assert created["text_sha256"] == hashlib.sha256(b"Policy 2026-11.").hexdigest()
    same = await publish(
        client, "2026-11", expect=200, summary="Adds cross-border transfer detail."
    )
    assert same["published_at"] == created["published_at"]
    other = await publish(client, "2026-11", expect=409, summary="Something else.")
    assert "never change" in other["detail"]

    listing = (await client.get("/v1/policies")).json()["items"]
    assert [p["version"] for p in listing] == ["2026-11", "2022-02"]
    assert [p["current"] for p in listing] == [True, False]
    old = await client.get("/v1/policies/2022-02")
    assert old.status_code == 200
    assert old.json()["text"] is None  # the seed is archived by hash; its text ships in the package
    assert (await client.get("/v1/policies/1999-01")).status_code == 404


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"material": True}, ["body"]),
        ({"material": True, "affected_purposes": ["no_such_purpose"]}, ["body", "affected_purposes", 0]),
        ({"material": True, "affected_purposes": ["account_registration"]}, ["body", "affected_purposes", 0]),
        ({"affected_purposes": ["skin_care"]}, ["body"]),
        ({"effective_at": "2020-01-01T00:00:00Z"}, ["body", "effective_at"]),
        ({"text": None}, ["body"]),
        ({"text_sha256": "0" * 64}, ["body"]),
    ],
)  # fmt: skip
async def test_bad_policy_versions_are_422(
    client: httpx.AsyncClient, body: dict[str, Any], loc: list[object]
) -> None:
    problem = await publish(client, "v-bad", expect=422, **body)
    assert problem["errors"][0]["loc"] == loc
    problem = await publish(client, "has space", expect=422)
    assert problem["errors"][0]["loc"] == ["body", "version"]
    problem = await publish(client, "v-bad", expect=422, **body)
    assert problem["errors"][0]["loc"] == loc
    assert [p["version"] for p in (await client.get("/v1/policies")).json()["items"]] == ["2022-02"]


async def test_a_material_change_requires_reconsent_for_the_purposes_it_affects(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    old = await set_consent(client, subject_id, *OPTIONAL, "given")
    other = await set_consent(client, subject_id, "gender", "new_product_development", "given")
    assert old["policy_version"] == other["policy_version"] == "2022-02"
    version = await publish(
        client, "2026-12", material=True, affected_purposes=[OPTIONAL[1]], summary="New analytics."
    )
    assert "gender" in version["affected_targets"]

    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["allowed"], decision["reason"], decision["state"]) == (
        False,
        "reconsent_required",
        "given",
    )
    assert decision["event_id"] == old["event_id"]
    assert (await check(client, subject_id, "gender", "new_product_development"))["allowed"]
    listing = await consents(client, subject_id)
    assert listing[OPTIONAL]["renewal_required"] is True
    assert listing[("gender", "new_product_development")]["renewal_required"] is False

    stale = await set_consent(
        client, subject_id, *OPTIONAL, "given", policy_version="2022-02", expect=409
    )
    assert stale["current_version"] == "2026-12"
    assert "2026-12" in stale["detail"]
    await set_consent(client, subject_id, *OPTIONAL, "refused", policy_version="2022-02")
    renewed = await set_consent(client, subject_id, *OPTIONAL, "given")
    assert renewed["policy_version"] == "2026-12"
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "consent_given"

    again = await set_consent(client, subject_id, "gender", "new_product_development", "given")
    events = await all_events(client, subject_id)
    assert events[-1]["reason"] == "renewal"
    assert again["policy_version"] == "2026-12"


async def test_a_non_material_change_carries_consents_forward(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await publish(client, "2026-12", summary="Clarified wording only.")
    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["allowed"], decision["policy_version"]) == (True, "2022-02")
    # and a write may still name the older version shown on a screen that was open
    written = await set_consent(
        client, subject_id, "age", "service_improvement", "given", policy_version="2022-02"
    )
    assert written["allowed"] is True


async def test_as_of_answers_across_a_material_change(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    given = await set_consent(client, subject_id, *OPTIONAL, "given")
    await asyncio.sleep(0.01)
    version = await publish(client, "2026-12", material=True, affected_purposes=[OPTIONAL[1]])
    before = await consents(client, subject_id, as_of=given["recorded_at"])
    assert (before[OPTIONAL]["allowed"], before[OPTIONAL]["reason"]) == (True, "consent_given")
    after = await consents(client, subject_id, as_of=version["effective_at"])
    assert (after[OPTIONAL]["allowed"], after[OPTIONAL]["reason"]) == (False, "reconsent_required")


async def test_a_version_that_takes_effect_later_changes_nothing_until_then(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    later = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    version = await publish(
        client, "2027-01", material=True, affected_purposes=[OPTIONAL[1]], effective_at=later
    )
    assert version["current"] is False
    assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True
    early = await set_consent(
        client,
        subject_id,
        "age",
        "service_improvement",
        "given",
        policy_version="2027-01",
        expect=422,
    )
    assert "not in effect yet" in early["detail"]


# --- children and guardians ---------------------------------------------------------------------


async def test_a_child_needs_a_verified_guardian_before_any_optional_consent(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    child = await client.put(f"/v1/subjects/{subject_id}", json={"birth_year": 2016})
    assert child.json()["child"] is True
    refused = await set_consent(client, subject_id, *OPTIONAL, "given", expect=409)
    assert refused["type"].endswith("guardian-consent-required")
    assert "guardian-consents" in refused["detail"]
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "guardian_consent_required"
    await set_consent(client, subject_id, "age", "service_improvement", "refused")  # always fine

    recorded = await client.post(f"/v1/subjects/{subject_id}/guardian-consents", json=GUARDIAN)
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["recorded_by"] == "app:test-app"
    given = await set_consent(client, subject_id, *OPTIONAL, "given")
    assert given["allowed"] is True
    last = (await all_events(client, subject_id))[-1]
    assert (last["actor"], last["actor_id"]) == ("guardian", "guardian-77")
    assert last["evidence"]["recorded_by"] == "app:test-app"
    guardians = (await client.get(f"/v1/subjects/{subject_id}/guardian-consents")).json()["items"]
    assert [g["guardian_ref"] for g in guardians] == ["guardian-77"]


async def test_finding_out_a_subject_is_a_child_revokes_their_unbacked_consents(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await set_consent(client, subject_id, "age", "service_improvement", "refused")
    await set_consent(client, subject_id, *SENSITIVE, "given", evidence=PROMPT)
    response = await client.put(
        f"/v1/subjects/{subject_id}", json={"jurisdiction": "CN", "birth_date": "2015-03-01"}
    )
    assert response.status_code == 201 or response.status_code == 200
    events = await all_events(client, subject_id)
    revoked = [e for e in events if e["state"] == "revoked"]
    assert {(e["target"], e["purpose"]) for e in revoked} == {OPTIONAL, SENSITIVE}
    assert all(e["actor"] == "system" and "child" in e["reason"] for e in revoked)
    recompute(events)
    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["reason"], decision["event_id"]) == ("revoked", revoked[0]["id"])
    assert (await check(client, subject_id, "age", "service_improvement"))["reason"] == "refused"


async def test_a_guardian_on_file_keeps_consents_when_the_age_arrives_later(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await client.post(f"/v1/subjects/{subject_id}/guardian-consents", json=GUARDIAN)
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await client.put(f"/v1/subjects/{subject_id}", json={"age": 9})
    assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True


async def test_a_guardian_consent_before_a_material_change_still_needs_reconsent(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await client.put(f"/v1/subjects/{subject_id}", json={"age": 10})
    await client.post(f"/v1/subjects/{subject_id}/guardian-consents", json=GUARDIAN)
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await publish(client, "2026-12", material=True, affected_purposes=[OPTIONAL[1]])
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "reconsent_required"
    await set_consent(client, subject_id, *OPTIONAL, "given")
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "consent_given"
    last = (await all_events(client, subject_id))[-1]
    assert (last["actor"], last["reason"], last["policy_version"]) == (
        "guardian",
        "renewal",
        "2026-12",
    )


@pytest.mark.parametrize(
    ("jurisdiction", "age", "child"),
    [("CN", 13, True), ("CN", 14, False), ("EU", 15, True), ("DE", 15, True),
     ("FR", 14, True), ("FR", 15, False), ("BE", 13, False), ("BE", 12, True), ("US", 15, True)],
)  # fmt: skip
async def test_child_age_depends_on_jurisdiction(
    client: httpx.AsyncClient, subject_id: str, jurisdiction: str, age: int, child: bool
) -> None:
    response = await client.put(
        f"/v1/subjects/{subject_id}", json={"jurisdiction": jurisdiction, "age": age}
    )
    assert response.json()["child"] is child


async def test_bad_subject_ages_are_422(client: httpx.AsyncClient, subject_id: str) -> None:
    for body in ({"age": 20, "birth_year": 2000}, {"age": -1}, {"birth_date": "2999-01-01"}):
        response = await client.put(f"/v1/subjects/{subject_id}", json=body)
        assert response.status_code == 422, body
    bad = await client.post(
        f"/v1/subjects/{subject_id}/guardian-consents", json=GUARDIAN | {"relationship": "uncle"}
    )
    assert bad.status_code == 422


# --- separate consent ---------------------------------------------------------------------------


async def test_sensitive_and_separate_consent_purposes_need_a_dedicated_prompt(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    accept_all = {
        "source": "onboarding",
        "changes": [
            {"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "given"},
            {"target": SENSITIVE[0], "purpose": SENSITIVE[1], "state": "given"},
            {"target": "device.model", "purpose": "third_party_sharing", "state": "given"},
            {"target": LOCATION[0], "purpose": LOCATION[1], "state": "given"},
        ],
    }
    response = await client.post(f"/v1/subjects/{subject_id}/consents", json=accept_all)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"].endswith("separate-consent-required")
    assert [e["loc"] for e in problem["errors"]] == [
        ["body", "changes", 1],
        ["body", "changes", 2],
        ["body", "changes", 3],
    ]
    assert (await client.get(f"/v1/subjects/{subject_id}/events")).status_code == 404

    accept_all["changes"][1]["evidence"] = PROMPT  # type: ignore[index]
    accept_all["changes"][2]["evidence"] = {"prompt_id": "sharing-v2"}  # type: ignore[index]
    accept_all["changes"][3]["evidence"] = {"prompt_id": "location-v1"}  # type: ignore[index]
    response = await client.post(f"/v1/subjects/{subject_id}/consents", json=accept_all)
    assert response.status_code == 200, response.text
    # refusing never needs a prompt
    await set_consent(client, subject_id, "device.model", "cross_border_transfer", "refused")


# --- expiry -------------------------------------------------------------------------------------


async def test_a_purpose_validity_period_caps_every_consent_given_for_it(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    catalogue: Catalogue = app.state.catalogue
    purposes = tuple(
        p.model_copy(update={"validity_days": 30}) if p.key == OPTIONAL[1] else p
        for p in catalogue.file.purposes
    )
    app.state.catalogue = Catalogue(
        file=catalogue.file.model_copy(update={"purposes": purposes}),
        policy_text=catalogue.policy_text,
    )
    given = await set_consent(
        client, subject_id, *OPTIONAL, "given", expires_at="2999-01-01T00:00:00Z"
    )
    expires = datetime.fromisoformat(given["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    catalogue_view = (await client.get("/v1/catalogue")).json()
    [purpose] = [p for p in catalogue_view["purposes"] if p["key"] == OPTIONAL[1]]
    assert purpose["validity_days"] == 30


async def test_an_expired_consent_renewed_under_a_new_policy_version(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    await set_consent(client, subject_id, *OPTIONAL, "given", expires_at=soon.isoformat())
    await asyncio.sleep(0.4)
    expired = await check(client, subject_id, *OPTIONAL)
    assert (expired["allowed"], expired["reason"], expired["state"]) == (
        False,
        "expired",
        "expired",
    )
    await publish(client, "2026-12", material=True, affected_purposes=[OPTIONAL[1]])
    renewed = await set_consent(client, subject_id, *OPTIONAL, "given")
    assert (renewed["allowed"], renewed["policy_version"]) == (True, "2026-12")
    assert (await all_events(client, subject_id))[-1]["reason"] == "renewal"


# --- OS permission state ------------------------------------------------------------------------


async def observe(
    client: httpx.AsyncClient, subject_id: str, target: str, *, expect: int = 200, **body: Any
) -> dict[str, Any]:
    response = await client.put(
        f"/v1/subjects/{subject_id}/devices/phone-1/permissions/{target}", json=body
    )
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json()
    return result


async def device_check(
    client: httpx.AsyncClient, subject_id: str, pair: tuple[str, str]
) -> dict[str, Any]:
    response = await client.get(
        "/v1/checks",
        params={
            "subject_id": subject_id,
            "target": pair[0],
            "purpose": pair[1],
            "device_id": "phone-1",
        },
    )
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()["decisions"][0]
    return decision


@pytest.mark.parametrize(
    ("target", "body", "field"),
    [
        ("permission.camera", {"platform": "android", "native_value": "PERMISSION_DENIED", "state": "granted"}, "state"),
        ("permission.camera", {"platform": "ios", "native_value": "denied", "state": "denied"}, "state"),
        ("permission.camera", {"platform": "ios", "native_value": "PERMISSION_GRANTED", "state": "granted"}, "native_value"),
        ("permission.camera", {"platform": "android", "native_value": "PERMISSION_GRANTED", "state": "granted", "accuracy": "precise"}, "accuracy"),
        ("permission.location", {"platform": "ios", "native_value": "authorizedWhenInUse", "state": "granted", "scope": "background"}, "scope"),
        ("permission.camera", {"platform": "windows", "native_value": "x", "state": "granted"}, "platform"),
    ],
)  # fmt: skip
async def test_os_observations_that_do_not_add_up_are_422(
    client: httpx.AsyncClient, subject_id: str, target: str, body: dict[str, Any], field: str
) -> None:
    problem = await observe(client, subject_id, target, expect=422, **body)
    assert problem["errors"][0]["loc"] == ["body", field]


async def test_only_permission_targets_have_an_os_state(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    problem = await observe(
        client,
        subject_id,
        "gender",
        expect=422,
        platform="ios",
        native_value="authorized",
        state="granted",
    )
    assert problem["errors"][0]["loc"] == ["path", "target"]


async def test_an_os_grant_without_consent_is_still_denied(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await observe(
        client, subject_id, CAMERA[0], platform="ios", native_value="authorized", state="granted"
    )
    decision = await device_check(client, subject_id, CAMERA)
    assert (decision["allowed"], decision["reason"], decision["may_prompt"]) == (
        False,
        "not_asked",
        True,
    )


async def test_consent_and_os_state_must_both_allow_a_permission(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *CAMERA, "given")
    unobserved = await device_check(client, subject_id, CAMERA)
    assert (unobserved["reason"], unobserved["may_prompt"]) == ("os_denied", True)
    assert (await check(client, subject_id, *CAMERA))["allowed"] is True  # no device named

    denied = await observe(
        client,
        subject_id,
        CAMERA[0],
        platform="android",
        native_value="PERMISSION_DENIED",
        state="denied",
    )
    decision = await device_check(client, subject_id, CAMERA)
    assert (decision["allowed"], decision["reason"], decision["may_prompt"]) == (
        False,
        "os_denied",
        False,
    )
    next_prompt = datetime.fromisoformat(decision["next_prompt_after"])
    assert next_prompt == datetime.fromisoformat(denied["last_denied_at"]) + timedelta(hours=48)

    await observe(
        client,
        subject_id,
        CAMERA[0],
        platform="android",
        native_value="PERMISSION_GRANTED",
        state="granted_once",
    )
    decision = await device_check(client, subject_id, CAMERA)
    assert (decision["allowed"], decision["reason"], decision["may_prompt"]) == (
        True,
        "consent_given",
        False,
    )


async def test_a_permanent_denial_sends_the_user_to_system_settings(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *LOCATION, "given", evidence={"prompt_id": "loc-1"})
    await observe(
        client,
        subject_id,
        LOCATION[0],
        platform="ios",
        native_value="denied",
        state="denied_permanent",
    )
    decision = await device_check(client, subject_id, LOCATION)
    assert decision["reason"] == "os_denied"
    assert (decision["may_prompt"], decision["settings_required"]) == (False, True)
    await observe(
        client,
        subject_id,
        LOCATION[0],
        platform="ios",
        native_value="authorizedWhenInUse",
        state="granted",
        accuracy="approximate",
        scope="foreground",
    )
    assert (await device_check(client, subject_id, LOCATION))["allowed"] is True


async def test_no_prompt_within_48_hours_of_a_refusal(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    refused = await set_consent(client, subject_id, *CAMERA, "refused")
    decision = await check(client, subject_id, *CAMERA)
    assert (decision["reason"], decision["may_prompt"]) == ("refused", False)
    assert datetime.fromisoformat(decision["next_prompt_after"]) == datetime.fromisoformat(
        refused["recorded_at"]
    ) + timedelta(hours=48)
    data = await check(client, subject_id, *OPTIONAL)
    assert data["may_prompt"] is None  # prompts are for permissions


async def test_an_older_observation_arriving_late_changes_nothing(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    now = datetime.now(UTC)
    await observe(
        client,
        subject_id,
        CAMERA[0],
        platform="ios",
        native_value="authorized",
        state="granted",
        observed_at=now.isoformat(),
    )
    late = await observe(
        client,
        subject_id,
        CAMERA[0],
        platform="ios",
        native_value="denied",
        state="denied_permanent",
        observed_at=(now - timedelta(minutes=1)).isoformat(),
    )
    assert late["state"] == "granted"


# --- what review found --------------------------------------------------------------------------


async def test_a_consent_given_before_the_guardian_was_on_file_is_not_backed(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await client.post(f"/v1/subjects/{subject_id}/guardian-consents", json=GUARDIAN)
    await client.put(f"/v1/subjects/{subject_id}", json={"age": 9})
    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["allowed"], decision["reason"]) == (False, "revoked")
    [revoked] = [e for e in await all_events(client, subject_id) if e["state"] == "revoked"]
    assert revoked["actor"] == "system"


async def test_a_child_cannot_consent_with_their_own_token(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, subject_id: str
) -> None:
    await client.put(f"/v1/subjects/{subject_id}", json={"birth_year": 2016})
    await client.post(f"/v1/subjects/{subject_id}/guardian-consents", json=GUARDIAN)
    token = (await client.post(f"/v1/subjects/{subject_id}/tokens")).json()["token"]
    url = f"/v1/subjects/{subject_id}/consents/{SENSITIVE[0]}/{SENSITIVE[1]}"
    given = await anonymous.put(
        url, json={"state": "given", "evidence": PROMPT}, headers=auth(token)
    )
    assert given.status_code == 409
    assert "guardian" in given.json()["detail"]
    refused = await anonymous.put(url, json={"state": "refused"}, headers=auth(token))
    assert refused.status_code == 200
    [event] = await all_events(client, subject_id)
    assert (event["actor"], event["actor_id"]) == ("subject", subject_id)


async def test_restating_an_age_restarts_it(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    await client.put(f"/v1/subjects/{subject_id}", json={"jurisdiction": "CN", "age": 13})
    async with app.state.database.write_sessions() as session, session.begin():
        subject = await session.get(Subject, subject_id)
        assert subject is not None
        subject.age_stated_at = datetime.now(UTC) - timedelta(days=400)
        session.add(subject)
    assert (await client.get(f"/v1/subjects/{subject_id}")).json()["child"] is False
    again = await client.put(f"/v1/subjects/{subject_id}", json={"jurisdiction": "CN", "age": 13})
    assert again.json()["child"] is True


async def test_nul_characters_in_policies_are_422(client: httpx.AsyncClient) -> None:
    problem = await publish(client, "v-nul", expect=422, text="a\u0000b")
    assert problem["errors"][0]["loc"] == ["body", "text"]
    assert (await client.get("/v1/policies/a%00b")).status_code == 422


async def test_concurrent_publications_take_effect_in_the_order_they_were_published(
    client: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(
        *(
            client.post(
                "/v1/policies",
                json={"version": f"v-{i}", "text": f"Text {i}.", "summary": "Concurrent."},
                headers=OFFICER,
            )
            for i in range(6)
        )
    )
    assert [r.status_code for r in responses] == [201] * 6
    published = sorted((r.json() for r in responses), key=lambda p: p["published_at"])
    effective = [p["effective_at"] for p in published]
    assert effective == sorted(effective)
    assert len(set(effective)) == 6


async def test_a_version_effective_a_moment_ago_takes_effect_now(
    client: httpx.AsyncClient,
) -> None:
    moment_ago = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    version = await publish(client, "2026-12", effective_at=moment_ago)
    assert version["effective_at"] >= version["published_at"]


async def test_one_prompt_id_cannot_stand_for_several_dedicated_prompts(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    batch = {
        "evidence": PROMPT,
        "changes": [
            {"target": SENSITIVE[0], "purpose": SENSITIVE[1], "state": "given"},
            {"target": "device.model", "purpose": "cross_border_transfer", "state": "given"},
        ],
    }
    response = await client.post(f"/v1/subjects/{subject_id}/consents", json=batch)
    assert response.status_code == 422
    assert len(response.json()["errors"]) == 2
    single = {"evidence": PROMPT, "changes": batch["changes"][:1]}  # type: ignore[index]
    assert (
        await client.post(f"/v1/subjects/{subject_id}/consents", json=single)
    ).status_code == 200
