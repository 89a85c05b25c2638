"""Recipients and signed webhooks: what is announced to whom, delivery to a real HTTP receiver on
loopback (signatures checked the way the README tells receivers to), retries, giving up, replay,
and workers that never deliver one message at once."""

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from app.core.config import Settings
from app.core.db import _WRITE_OPTION
from app.webhooks import delivery
from app.webhooks.delivery import BATCH, Deliverer
from tests.factories import KEYS, OPTIONAL, OPTIONAL_2, TEST_SECRET, auth, set_consent
from tests.receiver import Receiver, receiving

ADMIN = auth(KEYS["admin"])
OFFICER = auth(KEYS["officer"])


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The tests drive delivery themselves (no in-process worker), with quick retries."""
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        webhook_worker="off",
        webhook_retry_seconds=0.05,
        webhook_timeout_seconds=2,
    )


@pytest.fixture
def deliverer(app: FastAPI) -> Deliverer:
    return Deliverer(app.state.settings, app.state.database)


async def add_recipient(
    client: httpx.AsyncClient, receiver: Receiver | None, expect: int = 201, **body: Any
) -> dict[str, Any]:
    payload = {"name": f"proc-{time.monotonic_ns()}", "kind": "processor"} | body
    if receiver is not None:
        payload.setdefault("url", receiver.url)
    response = await client.post("/v1/recipients", json=payload, headers=OFFICER)
    assert response.status_code == expect, response.text
    created: dict[str, Any] = response.json()
    if receiver is not None and expect == 201:
        receiver.secret = created["secret"]
    return created


async def until(deliverer: Deliverer, done: Callable[[], bool], seconds: float = 15) -> None:
    """Run delivery rounds until ``done()``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "deliveries did not finish in time"
        await deliverer.deliver_due()
        await asyncio.sleep(0.02)


async def deliveries(client: httpx.AsyncClient, recipient_id: str, **params: str) -> list[Any]:
    response = await client.get(
        f"/v1/recipients/{recipient_id}/deliveries", params=params, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def attempts(client: httpx.AsyncClient, recipient_id: str) -> list[Any]:
    response = await client.get(f"/v1/recipients/{recipient_id}/attempts", headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def test_a_withdrawal_is_announced_signed_to_the_recipients_relying_on_it(
    client: httpx.AsyncClient, deliverer: Deliverer, subject_id: str
) -> None:
    with receiving() as relying, receiving() as other:
        recipient = await add_recipient(client, relying, purposes=[OPTIONAL[1]])
        await add_recipient(client, other, purposes=["third_party_sharing"])
        given = await set_consent(client, subject_id, *OPTIONAL, "given")
        withdrawn = await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        await until(deliverer, lambda: len(relying.delivered_ids) == 1)
        await deliverer.deliver_due()

    assert other.received == [], "a recipient that does not rely on the pair is not told"
    [message] = relying.received
    assert message.signature_ok
    assert abs(message.timestamp - time.time()) < 60
    assert message.body["type"] == "consent.withdrawn"
    assert message.body["data"] | {"recorded_at": None} == {
        "subject_id": subject_id,
        "target": OPTIONAL[0],
        "purpose": OPTIONAL[1],
        "state": "withdrawn",
        "previous_state": "given",
        "event_id": withdrawn["event_id"],
        "seq": 2,
        "recorded_at": None,
        "source": "api",
    }
    assert given["event_id"] != withdrawn["event_id"]
    [delivery] = await deliveries(client, recipient["id"])
    assert delivery["id"] == message.webhook_id
    assert (delivery["status"], delivery["attempts"], delivery["next_attempt_at"]) == (
        "delivered", 1, None
    )  # fmt: skip
    [attempt] = await attempts(client, recipient["id"])
    assert (attempt["outcome"], attempt["status_code"]) == ("delivered", 200)
    assert (
        "secret"
        not in (await client.get(f"/v1/recipients/{recipient['id']}", headers=ADMIN)).json()
    )


async def test_a_receiver_that_fails_its_first_attempts_gets_the_message_later(
    client: httpx.AsyncClient, deliverer: Deliverer, subject_id: str
) -> None:
    with receiving(fail_first=3) as receiver:
        recipient = await add_recipient(client, receiver)
        await set_consent(client, subject_id, *OPTIONAL, "given")
        await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        await until(deliverer, lambda: len(receiver.delivered_ids) == 1)

    ids = {r.webhook_id for r in receiver.received}
    assert len(receiver.received) == 4
    assert len(ids) == 1, "one message, the same id every time"
    outcomes = [(a["outcome"], a["status_code"]) for a in await attempts(client, recipient["id"])]
    assert outcomes == [("retrying", 500)] * 3 + [("delivered", 200)]
    gaps = [
        b.started - a.started
        for a, b in zip(receiver.received, receiver.received[1:], strict=False)
    ]
    assert gaps[2] > gaps[0], f"the waits grow: {gaps}"
    [delivery] = await deliveries(client, recipient["id"])
    assert (delivery["status"], delivery["attempts"], delivery["last_error"]) == (
        "delivered", 4, None
    )  # fmt: skip


async def test_a_receiver_that_is_down_loses_nothing(
    client: httpx.AsyncClient, deliverer: Deliverer, subject_id: str
) -> None:
    with receiving() as gone:
        url = gone.url
    recipient = await add_recipient(client, None, url=url)  # nothing listens there any more
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
    for _ in range(3):
        await deliverer.deliver_due()
        await asyncio.sleep(0.2)
    [delivery] = await deliveries(client, recipient["id"])
    assert delivery["status"] == "pending"
    assert delivery["attempts"] >= 2
    assert "ConnectError" in delivery["last_error"]

    with receiving() as receiver:
        receiver.secret = recipient["secret"]
        moved = await client.patch(
            f"/v1/recipients/{recipient['id']}", json={"url": receiver.url}, headers=OFFICER
        )
        assert moved.status_code == 200, moved.text
        await until(deliverer, lambda: len(receiver.delivered_ids) == 1)
    assert receiver.delivered_ids == [delivery["id"]]


async def test_retries_give_up_after_the_window_and_a_failed_delivery_can_be_replayed(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    settings = app.state.settings.model_copy(update={"webhook_give_up_seconds": 0.5})
    deliverer = Deliverer(settings, app.state.database)
    with receiving(status=503) as receiver:
        recipient = await add_recipient(client, receiver)
        await set_consent(client, subject_id, *OPTIONAL, "given")
        await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        [delivery] = await deliveries(client, recipient["id"])
        replay = f"/v1/recipients/{recipient['id']}/deliveries/{delivery['id']}/replay"
        pending = await client.post(replay, headers=OFFICER)
        assert pending.status_code == 409, pending.text
        assert pending.json()["type"].endswith("delivery-not-replayable")

        async def failed() -> bool:
            return (await deliveries(client, recipient["id"]))[0]["status"] == "failed"

        deadline = time.monotonic() + 15
        while not await failed():
            assert time.monotonic() < deadline
            await deliverer.deliver_due()
            await asyncio.sleep(0.05)
        tries = len(receiver.received)
        assert tries >= 2
        assert (await attempts(client, recipient["id"]))[-1]["outcome"] == "failed"
        metrics = (await client.get("/metrics", headers=ADMIN)).text
        assert (
            'consent_ledger_webhook_messages{status="failed",type="consent.withdrawn"} 1' in metrics
        )
        await deliverer.deliver_due()
        assert len(receiver.received) == tries, "a failed message is not retried on its own"

        receiver.status = 200
        replayed = await client.post(replay, headers=OFFICER)
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["status"] == "pending"
        await until(deliverer, lambda: len(receiver.delivered_ids) == 1)
    assert receiver.delivered_ids == [delivery["id"]], "replayed under the same webhook-id"
    [after] = await deliveries(client, recipient["id"])
    assert after["status"] == "delivered"
    missing = f"/v1/recipients/{recipient['id']}/deliveries/{recipient['id']}/replay"
    assert (await client.post(missing, headers=OFFICER)).status_code == 404


async def test_a_change_that_fails_announces_nothing(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    recipient = await add_recipient(client, None, url="https://processor.example/hooks")
    await set_consent(client, subject_id, *OPTIONAL, "given")
    response = await client.post(
        f"/v1/subjects/{subject_id}/consents",
        json={
            "changes": [
                {"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "withdrawn"},
                {"target": OPTIONAL_2[0], "purpose": OPTIONAL_2[1], "state": "withdrawn"},
            ]
        },
    )
    assert response.status_code == 409, response.text  # the second was never given
    assert await deliveries(client, recipient["id"]) == []
    await set_consent(client, subject_id, *OPTIONAL, "refused")
    assert await deliveries(client, recipient["id"]) == [], "a refusal stops nothing: none ran"


async def test_several_workers_never_deliver_one_message_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    workers = [Deliverer(app.state.settings, app.state.database) for _ in range(3)]
    with receiving(delay=0.05) as receiver:
        await add_recipient(client, receiver)
        for n in range(30):
            subject = f"busy-{n}"
            await set_consent(client, subject, *OPTIONAL, "given")
            await set_consent(client, subject, *OPTIONAL, "withdrawn")

        async def work(worker: Deliverer) -> None:
            deadline = time.monotonic() + 20
            while len(receiver.delivered_ids) < 30:
                assert time.monotonic() < deadline
                await worker.deliver_due()
                await asyncio.sleep(0.01)

        await asyncio.gather(*(work(w) for w in workers))
    ids = [r.webhook_id for r in receiver.received]
    assert len(ids) == len(set(ids)) == 30, "each message once, with no worker dying"
    by_id = sorted(receiver.received, key=lambda r: r.started)
    assert all(r.signature_ok for r in by_id)


async def test_the_in_process_worker_delivers_by_default(
    database_url: str, subject_id: str
) -> None:
    from app.main import create_app

    settings = Settings(database_url=database_url, secret_key=TEST_SECRET, webhook_poll_seconds=0.1)
    assert settings.webhook_worker == "in-process"
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=auth(KEYS["app"])
        ) as client:
            with receiving() as receiver:
                await add_recipient(client, receiver)
                await set_consent(client, subject_id, *OPTIONAL, "given")
                await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
                deadline = time.monotonic() + 10
                while not receiver.delivered_ids:
                    assert time.monotonic() < deadline, "not delivered by the server's worker"
                    await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"url": "http://processor.example/hooks"}, "use https"),
        ({"url": "https://user:pw@processor.example/hooks"}, "no credentials"),
        ({"url": "ftp://processor.example/hooks"}, "URL"),
        ({"url": "https://processor.example/hooks", "purposes": ["mind_reading"]}, "mind_reading"),
        ({"url": "https://processor.example/hooks", "targets": []}, "at least 1"),
        ({"url": "https://processor.example/hooks", "kind": "friend"}, "kind"),
        ({"url": "https://processor.example/" + "a" * 2100}, "longer than 2048"),
        ({"url": "https://processor.example/" + "é" * 500}, "longer than 2048"),
    ],
)
async def test_bad_recipients_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any], problem: str
) -> None:
    response = await client.post(
        "/v1/recipients", json={"name": "bad", "kind": "processor"} | body, headers=OFFICER
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert problem in response.text


async def test_a_paused_recipients_backlog_holds_up_no_other(
    client: httpx.AsyncClient, deliverer: Deliverer, subject_id: str
) -> None:
    with receiving() as receiver:
        paused = await add_recipient(client, receiver)
        assert (
            await client.post(f"/v1/recipients/{paused['id']}/disable", headers=OFFICER)
        ).is_success
        for _ in range(BATCH + 1):  # more than a round takes, all due before the other's
            await set_consent(client, subject_id, *OPTIONAL, "given")
            await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        live = await add_recipient(client, receiver)
        await set_consent(client, subject_id, *OPTIONAL, "given")
        await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        assert await deliverer.deliver_due() == 1, "one round: the enabled recipient's message"
        [delivered] = await deliveries(client, live["id"])
        assert delivered["status"] == "delivered"
        held = await deliveries(client, paused["id"], limit="100")
        assert [m["status"] for m in held] == ["pending"] * (BATCH + 2)
        assert receiver.delivered_ids == [delivered["id"]]


async def test_each_round_takes_the_oldest_due_messages_of_all_recipients(
    client: httpx.AsyncClient, deliverer: Deliverer, subject_id: str
) -> None:
    with receiving() as receiver:
        first, second = await add_recipient(client, receiver), await add_recipient(client, receiver)
        for _ in range(BATCH):  # a message to each recipient every time, in this order
            await set_consent(client, subject_id, *OPTIONAL, "given")
            await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        assert await deliverer.deliver_due() == BATCH
        for recipient in (first, second):
            messages = await deliveries(client, recipient["id"], limit="100")
            tried = [m["attempts"] for m in messages]  # oldest first (ids are time-ordered)
            assert tried == [1] * (BATCH // 2) + [0] * (BATCH // 2), "each one's oldest half"


async def test_a_round_records_its_outcomes_in_one_transaction(
    app: FastAPI, client: httpx.AsyncClient, deliverer: Deliverer, subject_id: str
) -> None:
    """Every write transaction takes SQLite's one write lock, which the consent changes need too:
    a round takes it twice (its claim, its outcomes), not once per message."""
    with receiving() as receiver:
        recipient = await add_recipient(client, receiver)
        for _ in range(5):
            await set_consent(client, subject_id, *OPTIONAL, "given")
            await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        writes: list[bool] = []

        def committed(connection: Any) -> None:
            writes.append(bool(connection.get_execution_options().get(_WRITE_OPTION)))

        await app.state.database.settled()  # the requests' key-use writes, not the round's
        engine = app.state.database.engine.sync_engine
        event.listen(engine, "commit", committed)
        try:
            assert await deliverer.deliver_due() == 5
        finally:
            event.remove(engine, "commit", committed)
    assert len(receiver.delivered_ids) == 5
    assert writes.count(True) == 2, writes
    messages = await deliveries(client, recipient["id"])
    assert [(m["status"], m["attempts"]) for m in messages] == [("delivered", 1)] * 5


async def test_a_message_that_cannot_be_sent_holds_up_none_of_its_round(
    client: httpx.AsyncClient,
    deliverer: Deliverer,
    subject_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with receiving() as receiver:
        recipient = await add_recipient(client, receiver)
        for _ in range(3):
            await set_consent(client, subject_id, *OPTIONAL, "given")
            await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        broken = (await deliveries(client, recipient["id"]))[1]["id"]
        body_of = delivery.body_of

        def body(message: Any) -> bytes:
            if str(message.id) == broken:
                raise ValueError("a payload that cannot be written")
            return body_of(message)

        monkeypatch.setattr(delivery, "body_of", body)
        assert await deliverer.deliver_due() == 3
    assert len(receiver.delivered_ids) == 2
    states = {
        m["id"]: (m["status"], m["attempts"]) for m in await deliveries(client, recipient["id"])
    }
    assert states.pop(broken) == ("pending", 1), "tried, and retried later"
    assert list(states.values()) == [("delivered", 1)] * 2
    [failed] = [a for a in await attempts(client, recipient["id"]) if a["outcome"] == "retrying"]
    assert "a payload that cannot be written" in failed["error"]


async def test_recipients_are_named_once_disabled_and_enabled_and_rotate_secrets(
    client: httpx.AsyncClient, deliverer: Deliverer, subject_id: str
) -> None:
    with receiving() as receiver:
        recipient = await add_recipient(client, receiver, name="analytics-co")
        again = await add_recipient(client, None, expect=409, name="analytics-co", url=receiver.url)
        assert again["type"].endswith("recipient-name-taken")
        base = f"/v1/recipients/{recipient['id']}"
        disabled = await client.post(f"{base}/disable", headers=OFFICER)
        assert disabled.status_code == 200
        assert disabled.json()["disabled_at"] is not None
        await set_consent(client, subject_id, *OPTIONAL, "given")
        await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        await deliverer.deliver_due()
        [held] = await deliveries(client, recipient["id"])
        assert (held["status"], held["attempts"]) == ("pending", 0), "disabled: held, not lost"
        assert receiver.received == []

        assert (await client.post(f"{base}/enable", headers=OFFICER)).status_code == 200
        await until(deliverer, lambda: len(receiver.delivered_ids) == 1)
        rotated = await client.post(f"{base}/secret-rotation", headers=OFFICER)
        assert rotated.status_code == 200
        assert rotated.json()["secret"] != recipient["secret"]
        receiver.secret = rotated.json()["secret"]
        await set_consent(client, subject_id, *OPTIONAL, "given")
        await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        await until(deliverer, lambda: len(receiver.delivered_ids) == 2)
    assert all(r.signature_ok for r in receiver.received), "signed with the new secret"
    nulled = await client.patch(base, json={"url": None}, headers=OFFICER)
    assert nulled.status_code == 422
    assert nulled.json()["errors"][0]["loc"] == ["body", "url"]
    listing = await client.get("/v1/recipients", headers=auth(KEYS["auditor"]))
    assert [r["name"] for r in listing.json()["items"]] == ["analytics-co"]
    unknown = await client.get(f"/v1/recipients/{subject_id}", headers=ADMIN)
    assert unknown.status_code == 422  # not a uuid


async def test_a_slow_receiver_is_cut_off_and_never_gets_one_message_twice_at_once(
    app: FastAPI, client: httpx.AsyncClient, subject_id: str
) -> None:
    """The time-out bounds the whole delivery, not each read: a receiver that trickles its answer
    cannot keep a delivery going past the claim, so no other worker starts the same message."""
    settings = app.state.settings.model_copy(update={"webhook_timeout_seconds": 0.5})
    workers = [Deliverer(settings, app.state.database) for _ in range(2)]
    with receiving(trickle=0.2) as receiver:  # each read gets a byte in time; the answer, never
        recipient = await add_recipient(client, receiver)
        await set_consent(client, subject_id, *OPTIONAL, "given")
        await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
        started = time.monotonic()
        await asyncio.gather(*(w.deliver_due() for w in workers))
        elapsed = time.monotonic() - started
        for _ in range(3):  # retries, by either worker
            await asyncio.sleep(0.3)
            await asyncio.gather(*(w.deliver_due() for w in workers))
    assert elapsed < 2, f"one round took {elapsed:.1f} s: the deadline did not hold"
    tried = await attempts(client, recipient["id"])
    assert len(tried) >= 2
    assert all(a["error"] == "no answer within 0.5 s" for a in tried)
    assert all(a["duration_ms"] < 1500 for a in tried)
    starts = sorted(r.started for r in receiver.received)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.3 for gap in gaps), f"two attempts at once: {gaps}"


def test_the_readme_recipe_verifies_a_signature() -> None:
    """What a receiver copies from the README accepts our signature and nothing else."""
    from app.webhooks.signing import new_secret, sign
    from tests.api.test_audit import readme_block

    verify = readme_block("verify-webhook")["verify"]
    secret, body, now = new_secret(), b'{"type":"consent.withdrawn"}', int(time.time())
    headers = {
        "webhook-id": "01a2",
        "webhook-timestamp": str(now),
        "webhook-signature": "v1,bm9wZQ== " + sign(secret, "01a2", now, body),
    }
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(new_secret(), headers, body)
    assert not verify(secret, headers | {"webhook-timestamp": str(now - 3600)}, body)
