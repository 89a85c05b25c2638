"""Users' rights end to end: account cancellation, deletion and access requests, and the child
found after the fact; what the subject, the checks, the export and the recipients see."""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core.config import Settings
from app.webhooks.delivery import Deliverer
from tests.factories import (
    KEYS,
    NECESSARY,
    OPTIONAL,
    OPTIONAL_2,
    TEST_SECRET,
    all_events,
    auth,
    check,
    set_consent,
)
from tests.receiver import Receiver, receiving

OFFICER = auth(KEYS["officer"])
CAMERA = "permission.camera"
OBSERVATION = {"platform": "android", "native_value": "PERMISSION_GRANTED", "state": "granted"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key=TEST_SECRET, webhook_worker="off")


async def recipient(client: httpx.AsyncClient, receiver: Receiver, **body: Any) -> str:
    response = await client.post(
        "/v1/recipients",
        json={"name": f"r-{len(body)}-{id(receiver)}", "kind": "processor", "url": receiver.url}
        | body,
        headers=OFFICER,
    )
    assert response.status_code == 201, response.text
    receiver.secret = response.json()["secret"]
    recipient_id: str = response.json()["id"]
    return recipient_id


async def deliver_all(app: FastAPI) -> None:
    deliverer = Deliverer(app.state.settings, app.state.database)
    while await deliverer.deliver_due():
        pass
    await deliverer.aclose()


async def a_subject_with_data(client: httpx.AsyncClient, subject_id: str) -> None:
    response = await client.put(f"/v1/subjects/{subject_id}", json={"birth_year": 1990})
    assert response.status_code == 201, response.text
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await set_consent(client, subject_id, *OPTIONAL_2, "given")
    observed = await client.put(
        f"/v1/subjects/{subject_id}/devices/phone-1/permissions/{CAMERA}", json=OBSERVATION
    )
    assert observed.status_code == 200, observed.text


async def test_cancelling_an_account_withdraws_erases_and_tells_the_recipients(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    await a_subject_with_data(client, subject_id)
    token = (await client.post(f"/v1/subjects/{subject_id}/tokens")).json()["token"]
    with receiving() as everything, receiving() as unrelated:
        await recipient(client, everything)
        await recipient(client, unrelated, purposes=["third_party_sharing"])
        cancelled = await client.post(
            f"/v1/subjects/{subject_id}/cancellation",
            json={"reason": "Leaving the app."},
            headers=auth(token),
        )
        assert cancelled.status_code == 200, cancelled.text
        await deliver_all(app)

    body = cancelled.json()
    assert (body["consents_withdrawn"], body["observations_erased"]) == (2, 1)
    assert body["recipients_notified"] == 1, "one recipient told to delete"
    assert body["subject"]["status"] == "cancelled"
    assert body["subject"]["cancelled_at"]
    assert body["subject"]["birth_year"] is None

    for pair in (OPTIONAL, OPTIONAL_2, NECESSARY):
        decision = await check(client, subject_id, *pair)
        assert (decision["allowed"], decision["reason"]) == (False, "account_cancelled")

    export = (await client.get(f"/v1/subjects/{subject_id}/export", headers=auth(token))).json()
    assert export["subject"]["birth_year"] is None
    assert export["permissions"] == []
    assert {c["state"] for c in export["consents"] if c["event_id"]} == {"withdrawn"}
    events = await all_events(client, subject_id)
    assert export["events"] == events, "the ledger stays, whole"
    assert [(e["state"], e["actor"], e["source"], e["reason"]) for e in events[2:]] == [
        ("withdrawn", "subject", "account_cancellation", "Leaving the app.")
    ] * 2
    assert (await client.get("/v1/audit/verify", headers=auth(KEYS["auditor"]))).json()["ok"]

    kinds = sorted(m.body["type"] for m in everything.received)
    assert kinds == ["consent.withdrawn", "consent.withdrawn", "subject.erasure_requested"]
    [erasure] = [m.body["data"] for m in everything.received if m.body["type"].startswith("subj")]
    assert erasure | {"requested_at": None} == {
        "subject_id": subject_id,
        "reason": "account_cancellation",
        "request_id": None,
        "requested_at": None,
    }
    assert all(m.signature_ok for m in everything.received)
    assert unrelated.received == [], "it never relied on anything the subject gave"

    again = await client.post(f"/v1/subjects/{subject_id}/cancellation", json={})
    assert again.status_code == 409
    assert again.json()["type"].endswith("subject-cancelled")
    for method, path, payload in (
        (
            "PUT",
            f"/v1/subjects/{subject_id}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}",
            {"state": "given"},
        ),
        ("PUT", f"/v1/subjects/{subject_id}", {"birth_year": 1990}),
        ("PUT", f"/v1/subjects/{subject_id}/devices/phone-1/permissions/{CAMERA}", OBSERVATION),
    ):
        refused = await client.request(method, path, json=payload)
        assert refused.status_code == 409, (path, refused.text)
    unknown = await client.post("/v1/subjects/nobody-here/cancellation", json={})
    assert unknown.status_code == 404


async def request_through(
    client: httpx.AsyncClient, subject_id: str, resolution: str, **body: Any
) -> dict[str, Any]:
    created = await client.post(f"/v1/subjects/{subject_id}/requests", json=body, headers=OFFICER)
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]
    for step, payload in (
        ("identity-verification", {"method": "account_login", "verified_by": "dpo"}),
        ("start", None),
        ("completion", {"resolution": resolution}),
    ):
        response = await client.post(
            f"/v1/requests/{request_id}/{step}", json=payload, headers=OFFICER
        )
        assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_a_completed_deletion_request_erases_but_keeps_the_account(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    await a_subject_with_data(client, subject_id)
    with receiving() as receiver:
        await recipient(client, receiver, purposes=[OPTIONAL[1]])
        done = await request_through(
            client, subject_id, "Erased.", type="deletion", deletion_circumstance="no_consent"
        )
        await deliver_all(app)
    subject = (await client.get(f"/v1/subjects/{subject_id}")).json()
    assert (subject["status"], subject["birth_year"]) == ("active", None)
    assert subject["erased_at"] is not None
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "withdrawn"
    assert (await check(client, subject_id, *NECESSARY))["allowed"] is True
    events = await all_events(client, subject_id)
    assert [(e["state"], e["actor"], e["source"]) for e in events[2:]] == [
        ("withdrawn", "officer", "data_subject_request")
    ] * 2
    log = (await client.get(f"/v1/requests/{done['id']}/events", headers=OFFICER)).json()
    assert log["items"][-1]["details"] == {
        "consents_withdrawn": 2,
        "observations_erased": 1,
        "recipients_notified": 1,
    }
    erasures = [m.body["data"] for m in receiver.received if m.body["type"].startswith("subj")]
    assert erasures == [erasures[0] | {"reason": "deletion_request", "request_id": done["id"]}]
    # The account goes on: the user may consent again.
    await set_consent(client, subject_id, *OPTIONAL, "given")
    assert (await check(client, subject_id, *OPTIONAL))["allowed"] is True


async def test_a_completed_cancellation_request_cancels_the_account(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    await a_subject_with_data(client, subject_id)
    await request_through(client, subject_id, "Cancelled.", type="account_cancellation")
    assert (await check(client, subject_id, *OPTIONAL))["reason"] == "account_cancelled"
    subject = (await client.get(f"/v1/subjects/{subject_id}")).json()
    assert subject["status"] == "cancelled"


async def test_completing_an_access_request_attaches_the_export(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await a_subject_with_data(client, subject_id)
    done = await request_through(client, subject_id, "Sent by e-mail.", type="access")
    assert done["export_attached"] is True
    attached = await client.get(f"/v1/requests/{done['id']}/export", headers=OFFICER)
    assert attached.status_code == 200, attached.text
    export = attached.json()
    assert export["subject_id"] == subject_id
    assert export["subject"]["birth_year"] == 1990
    assert len(export["events"]) == 2
    assert len(export["permissions"]) == 1
    assert {(c["target"], c["purpose"]) for c in export["consents"] if c["state"] == "given"} == {
        OPTIONAL,
        OPTIONAL_2,
    }
    [own] = export["requests"]
    assert own["type"] == "access"
    assert own["status"] == "in_progress"
    assert [e["action"] for e in own["events"]] == ["created", "identity_verified", "started"]

    other = await request_through(client, subject_id, "Fixed.", type="correction")
    missing = await client.get(f"/v1/requests/{other['id']}/export", headers=OFFICER)
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("no-export")
    now = (await client.get(f"/v1/subjects/{subject_id}/export")).json()
    assert len(now["requests"]) == 2
    assert now["requests"][0]["export_attached"] is True
    auditor = await client.get(f"/v1/requests/{done['id']}/export", headers=auth(KEYS["auditor"]))
    assert auditor.status_code == 403, "personal data: for the officer who sends it"

    # Erasing the subject erases the copy too.
    assert (
        await client.post(f"/v1/subjects/{subject_id}/cancellation", json={})
    ).status_code == 200
    erased = await client.get(f"/v1/requests/{done['id']}/export", headers=OFFICER)
    assert erased.status_code == 404


async def test_a_subject_found_to_be_a_child_gets_a_deletion_request_opened(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    with receiving() as receiver:
        await recipient(client, receiver)
        child = await client.put(f"/v1/subjects/{subject_id}", json={"birth_year": 2018})
        assert child.status_code == 200
        assert child.json()["child"] is True
        await deliver_all(app)
    assert [m.body["type"] for m in receiver.received] == ["consent.revoked"]
    requests = await client.get(f"/v1/subjects/{subject_id}/requests", headers=OFFICER)
    [opened] = requests.json()["items"]
    assert (opened["type"], opened["deletion_circumstance"], opened["status"]) == (
        "deletion", "no_consent", "received"
    )  # fmt: skip
    log = (await client.get(f"/v1/requests/{opened['id']}/events", headers=OFFICER)).json()
    assert log["items"][0]["actor"] == "system"
    # Saying it again opens no second one.
    await client.put(f"/v1/subjects/{subject_id}", json={"birth_year": 2018})
    again = await client.get(f"/v1/subjects/{subject_id}/requests", headers=OFFICER)
    assert len(again.json()["items"]) == 1

    # Carried out, the deletion erases the birth year, but not the fact of being a child.
    for step, payload in (
        ("identity-verification", {"method": "account_login", "verified_by": "dpo"}),
        ("start", None),
        ("completion", {"resolution": "Deleted what was collected."}),
    ):
        response = await client.post(
            f"/v1/requests/{opened['id']}/{step}", json=payload, headers=OFFICER
        )
        assert response.status_code == 200, response.text
    subject = (await client.get(f"/v1/subjects/{subject_id}")).json()
    assert subject["birth_year"] is None
    assert subject["child"] is True, "an erased child is not taken for an adult"
    token = (await client.post(f"/v1/subjects/{subject_id}/tokens")).json()["token"]
    await set_consent(client, subject_id, *OPTIONAL, "given", expect=409, headers=auth(token))
