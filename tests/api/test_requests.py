"""Data-subject requests: lifecycle, deadlines (with a controllable clock) and refusal rules."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.requests import router as requests_router
from app.requests import service as requests_service
from app.requests.deadlines import add_period, rule_for
from tests.factories import KEYS, auth

OFFICER = auth(KEYS["officer"])
AUDITOR = auth(KEYS["auditor"])


class Clock:
    """The time the request code sees; tests move it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime.now(UTC)
        for module in (requests_service, requests_router):
            monkeypatch.setattr(module, "utcnow", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


async def subject(client: httpx.AsyncClient, subject_id: str, jurisdiction: str = "CN") -> None:
    response = await client.put(f"/v1/subjects/{subject_id}", json={"jurisdiction": jurisdiction})
    assert response.status_code in (200, 201)


async def open_request(
    client: httpx.AsyncClient, subject_id: str, expect: int = 201, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/subjects/{subject_id}/requests", json={"type": "access"} | body, headers=OFFICER
    )
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json()
    return result


async def act(
    client: httpx.AsyncClient, request_id: str, action: str, expect: int = 200, **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/v1/requests/{request_id}/{action}", json=body, headers=OFFICER)
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json()
    return result


VERIFY = {"method": "id_document", "verified_by": "dpo@example.com"}


async def test_a_request_from_the_subject_runs_its_course_and_every_step_is_logged(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, subject_id: str
) -> None:
    await subject(client, subject_id)
    token = (await client.post(f"/v1/subjects/{subject_id}/tokens")).json()["token"]
    created = await anonymous.post(
        f"/v1/subjects/{subject_id}/requests",
        json={"type": "correction", "details": "My birth year is wrong."},
        headers=auth(token),
    )
    assert created.status_code == 201, created.text
    request = created.json()
    assert (request["status"], request["repeated"], request["overdue"]) == (
        "received",
        False,
        False,
    )
    received = datetime.fromisoformat(request["received_at"])
    assert datetime.fromisoformat(request["due_at"]) == received + timedelta(days=30)

    await act(client, request["id"], "start", expect=409)  # identity first
    await act(client, request["id"], "identity-verification", **VERIFY)
    await act(client, request["id"], "completion", expect=409, resolution="x")  # not started
    await act(client, request["id"], "start")
    done = await act(client, request["id"], "completion", resolution="Birth year corrected.")
    assert (done["status"], done["identity_method"]) == ("completed", "id_document")
    await act(client, request["id"], "refusal", expect=409, ground="trade_secrets", reason="x")

    events = await client.get(f"/v1/requests/{request['id']}/events", headers=AUDITOR)
    steps = [
        (e["actor"], e["action"], e["from_status"], e["to_status"]) for e in events.json()["items"]
    ]
    assert steps == [
        ("subject", "created", None, "received"),
        ("officer", "identity_verified", "received", "identity_verified"),
        ("officer", "started", "identity_verified", "in_progress"),
        ("officer", "completed", "in_progress", "completed"),
    ]
    own = await anonymous.get(f"/v1/subjects/{subject_id}/requests", headers=auth(token))
    assert [r["id"] for r in own.json()["items"]] == [request["id"]]


@pytest.mark.parametrize(
    "body",
    [
        {"ground": "we_do_not_want_to", "reason": "No."},
        {"ground": "abuse_of_rights"},
        {"ground": "abuse_of_rights", "reason": ""},
    ],
)
async def test_a_refusal_cites_one_of_the_eight_grounds_and_a_reason(
    client: httpx.AsyncClient, subject_id: str, body: dict[str, str]
) -> None:
    await subject(client, subject_id)
    request = await open_request(client, subject_id)
    await act(client, request["id"], "refusal", expect=422, **body)
    refused = await act(
        client, request["id"], "refusal", ground="abuse_of_rights", reason="Forty requests a day."
    )
    assert (refused["status"], refused["refusal_ground"]) == ("refused", "abuse_of_rights")


async def test_a_deletion_request_names_the_circumstance_that_applies(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await subject(client, subject_id)
    await open_request(client, subject_id, expect=422, type="deletion")
    await open_request(client, subject_id, expect=422, deletion_circumstance="no_consent")
    await open_request(
        client, subject_id, expect=422, type="deletion", deletion_circumstance="because"
    )
    deletion = await open_request(
        client, subject_id, type="deletion", deletion_circumstance="no_longer_used_or_cancelled"
    )
    assert deletion["deletion_circumstance"] == "no_longer_used_or_cancelled"


async def test_repeated_requests_are_flagged_and_need_a_fee_decision(
    client: httpx.AsyncClient, subject_id: str, clock: Clock
) -> None:
    await subject(client, subject_id)
    first = await open_request(client, subject_id)
    other_type = await open_request(client, subject_id, type="consent_change")
    clock.now += timedelta(days=200)
    second = await open_request(client, subject_id)
    assert (first["repeated"], other_type["repeated"], second["repeated"]) == (False, False, True)
    for request in (first, second):
        await act(client, request["id"], "identity-verification", **VERIFY)
        await act(client, request["id"], "start")
    await act(client, first["id"], "completion", expect=422, resolution="Sent.", fee="charged")
    await act(client, second["id"], "completion", expect=422, resolution="Sent.")
    done = await act(client, second["id"], "completion", resolution="Sent.", fee="waived")
    assert done["fee"] == "waived"
    clock.now += timedelta(days=400)
    assert (await open_request(client, subject_id))["repeated"] is False


async def test_eu_requests_are_due_in_a_calendar_month_extendable_by_two(
    client: httpx.AsyncClient, subject_id: str, clock: Clock
) -> None:
    await subject(client, subject_id, jurisdiction="FR")
    clock.now = datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
    request = await open_request(client, subject_id)
    assert request["due_at"] == "2027-02-28T09:30:00.000000Z"
    await act(client, request["id"], "extension", expect=422, period="3m", reason="Busy.")
    await act(client, request["id"], "extension", expect=422, period="2m")  # no reason
    extended = await act(client, request["id"], "extension", period="2m", reason="Complex.")
    assert extended["due_at"] == "2027-04-30T09:30:00.000000Z"  # three months from receipt
    assert extended["extension_reason"] == "Complex."
    await act(client, request["id"], "extension", expect=409, period="1d", reason="Again.")


async def test_elsewhere_thirty_days_and_no_extension_by_default(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await subject(client, subject_id, jurisdiction="CN")
    request = await open_request(client, subject_id)
    problem = await act(client, request["id"], "extension", expect=422, period="1d", reason="x")
    assert "0d" in problem["detail"]


async def test_overdue_requests_are_listed(
    client: httpx.AsyncClient, subject_id: str, clock: Clock
) -> None:
    await subject(client, subject_id)
    clock.now = datetime.now(UTC) - timedelta(days=31)
    late = await open_request(client, subject_id)
    clock.now = datetime.now(UTC) - timedelta(days=5)
    recent = await open_request(client, subject_id, type="correction")
    closed = await open_request(client, subject_id, type="consent_change")
    clock.now = datetime.now(UTC)
    await act(client, closed["id"], "cancellation", reason="Withdrawn by the subject.")

    listed = await client.get("/v1/requests", params={"overdue": "true"}, headers=AUDITOR)
    assert [(r["id"], r["overdue"]) for r in listed.json()["items"]] == [(late["id"], True)]
    on_time = await client.get(
        "/v1/requests", params={"overdue": "false", "subject_id": subject_id}, headers=AUDITOR
    )
    assert {r["id"] for r in on_time.json()["items"]} == {recent["id"], closed["id"]}
    by_status = await client.get("/v1/requests", params={"status": "cancelled"}, headers=AUDITOR)
    assert [r["id"] for r in by_status.json()["items"]] == [closed["id"]]
    paged = await client.get("/v1/requests", params={"limit": 1}, headers=AUDITOR)
    assert paged.json()["next_cursor"] is not None
    metrics = await client.get("/metrics", headers=AUDITOR)
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'consent_ledger_requests_overdue{type="access"} 1\n' in metrics.text
    assert 'consent_ledger_requests_open{type="access"} 1\n' in metrics.text
    assert 'consent_ledger_requests_open{type="correction"} 1\n' in metrics.text
    assert 'consent_ledger_requests_overdue{type="correction"} 0\n' in metrics.text
    assert 'consent_ledger_requests_open{type="consent_change"} 0\n' in metrics.text


async def test_requests_for_unknown_subjects_and_bad_ids(client: httpx.AsyncClient) -> None:
    await open_request(client, "nobody-here", expect=404)
    missing = await client.get("/v1/requests/00000000-0000-0000-0000-000000000000", headers=AUDITOR)
    assert missing.status_code == 404
    assert (await client.get("/v1/requests/not-a-uuid", headers=AUDITOR)).status_code == 422


@pytest.mark.parametrize(
    ("start", "period", "due"),
    [
        (datetime(2027, 1, 31, tzinfo=UTC), "1m", datetime(2027, 2, 28, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), "1m", datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 11, 30, tzinfo=UTC), "2m", datetime(2027, 1, 30, tzinfo=UTC)),
        (datetime(2026, 12, 15, tzinfo=UTC), "3m", datetime(2027, 3, 15, tzinfo=UTC)),
        (datetime(2026, 11, 25, tzinfo=UTC), "30d", datetime(2026, 12, 25, tzinfo=UTC)),
    ],
)
def test_periods_are_days_or_calendar_months(start: datetime, period: str, due: datetime) -> None:
    assert add_period(start, period) == due


def test_deadline_rules_follow_the_jurisdiction() -> None:
    settings = Settings(request_deadlines={"CN": {"due": "15d", "max_extension": "15d"}})
    assert rule_for(settings, "CN") == ("15d", "15d")
    assert rule_for(settings, "DE") == ("1m", "2m")  # an EU member follows EU
    assert rule_for(settings, "US") == ("30d", "0d")


async def test_an_overdue_request_can_no_longer_be_extended(
    client: httpx.AsyncClient, subject_id: str, clock: Clock
) -> None:
    await subject(client, subject_id, jurisdiction="DE")
    clock.now = datetime.now(UTC) - timedelta(days=40)
    request = await open_request(client, subject_id)
    clock.now = datetime.now(UTC)
    problem = await act(client, request["id"], "extension", expect=409, period="1m", reason="x")
    assert "overdue" in problem["detail"]


async def test_a_cancelled_request_does_not_make_the_next_one_repeated(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await subject(client, subject_id)
    mistake = await open_request(client, subject_id)
    await act(client, mistake["id"], "cancellation", reason="Opened by mistake.")
    assert (await open_request(client, subject_id))["repeated"] is False


async def test_requests_opened_at_once_are_flagged_repeated_all_but_one(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await subject(client, subject_id)
    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/subjects/{subject_id}/requests", json={"type": "access"}, headers=OFFICER
            )
            for _ in range(4)
        )
    )
    assert sorted(r.json()["repeated"] for r in responses) == [False, True, True, True]


@pytest.mark.parametrize(
    "rules",
    [
        {"de": {"due": "30d", "max_extension": "0d"}},
        {"CN": {"due": "120000m", "max_extension": "0d"}},
        {"CN": {"due": "30d"}},
    ],
)
def test_bad_deadline_settings_are_refused(rules: dict[str, dict[str, str]]) -> None:
    with pytest.raises(ValueError, match="request_deadlines"):
        Settings(request_deadlines=rules)
