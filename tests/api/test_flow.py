"""The core flow a new user follows: record, check, withdraw, check again, read the history."""

import httpx

from tests.factories import NECESSARY, OPTIONAL, all_events, check, set_consent


async def test_withdrawn_consent_denies_the_next_check(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    given = await set_consent(client, subject_id, *OPTIONAL, "given", source="settings_screen")
    decision = await check(client, subject_id, *OPTIONAL)
    assert decision["allowed"] is True
    assert decision["reason"] == "consent_given"
    assert decision["event_id"] == given["event_id"]

    withdrawn = await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
    decision = await check(client, subject_id, *OPTIONAL)
    assert decision["allowed"] is False
    assert decision["reason"] == "withdrawn"
    assert decision["state"] == "withdrawn"
    assert decision["event_id"] == withdrawn["event_id"]


async def test_nothing_recorded_is_denied_as_not_asked(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    decision = await check(client, subject_id, *OPTIONAL)
    assert decision == {
        "target": OPTIONAL[0],
        "purpose": OPTIONAL[1],
        "allowed": False,
        "reason": "not_asked",
        "state": "not_asked",
        "event_id": None,
        "policy_version": None,
        "may_prompt": None,  # these three are for permission targets only
        "next_prompt_after": None,
        "settings_required": None,
    }


async def test_refused_consent_is_denied(client: httpx.AsyncClient, subject_id: str) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "refused")
    decision = await check(client, subject_id, *OPTIONAL)
    assert (decision["allowed"], decision["reason"]) == (False, "refused")


async def test_necessary_contract_processing_is_allowed_without_consent(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    decision = await check(client, subject_id, *NECESSARY)
    assert (decision["allowed"], decision["reason"]) == (True, "necessary")


async def test_necessary_pair_cannot_be_withdrawn_and_points_to_cancellation(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    response = await client.put(
        f"/v1/subjects/{subject_id}/consents/{NECESSARY[0]}/{NECESSARY[1]}",
        json={"state": "withdrawn"},
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert "cancellation" in problem["detail"]
    assert (await client.get(f"/v1/subjects/{subject_id}/consents")).status_code == 404


async def test_every_change_is_in_the_ledger_with_who_when_and_how(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(
        client,
        subject_id,
        *OPTIONAL,
        "given",
        source="onboarding",
        evidence={"prompt_id": "onb-3"},
        app_version="5.2.0",
        locale="zh-CN",
    )
    await set_consent(client, subject_id, *OPTIONAL, "withdrawn", source="settings_screen")
    first, second = await all_events(client, subject_id)
    assert (first["seq"], second["seq"]) == (1, 2)
    assert (first["previous_state"], first["state"]) == ("not_asked", "given")
    assert (second["previous_state"], second["state"]) == ("given", "withdrawn")
    assert first["source"] == "onboarding"
    assert first["evidence"] == {"prompt_id": "onb-3"}
    assert (first["app_version"], first["locale"]) == ("5.2.0", "zh-CN")
    assert first["actor"] == "app"
    assert first["policy_version"] == "2022-02"
    assert first["recorded_at"].endswith("Z")
    assert second["prev_hash"] == first["hash"]
    assert first["prev_hash"] == "0" * 64


async def test_catalogue_lists_every_target_purpose_and_function_with_citations(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/catalogue")
    assert response.status_code == 200
    catalogue = response.json()
    targets = {t["key"]: t for t in catalogue["targets"]}
    assert {
        "email",
        "skin_condition",
        "gender",
        "age",
        "device.imei",
        "permission.location",
    } <= set(targets)
    assert targets["skin_condition"]["sensitive"] is True
    assert targets["permission.camera"]["kind"] == "permission"
    purposes = {p["key"]: p for p in catalogue["purposes"]}
    assert purposes["account_registration"]["legal_basis"] == "contract"
    assert purposes["third_party_sharing"]["separate_consent"] is True
    assert "usb_backup" in {f["key"] for f in catalogue["functions"]}
    assert all(entry["cites"] for entry in catalogue["targets"] + catalogue["purposes"])
    assert catalogue["policy_version"] == "2022-02"
