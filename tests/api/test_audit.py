"""The auditors' side: history queries, exports, verification, signed checkpoints, statistics."""

import asyncio
import base64
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI
from sqlalchemy import text
from sqlmodel import select

from app.audit import checkpoints
from app.audit.checkpoints import create_checkpoint
from app.core.config import Settings
from app.core.types import utcnow
from app.main import create_app
from app.models import Checkpoint
from tests.factories import KEYS, OPTIONAL, OPTIONAL_2, all_events, auth, set_consent

AUDITOR = auth(KEYS["auditor"])
OFFICER = auth(KEYS["officer"])


async def get(client: httpx.AsyncClient, url: str, **params: Any) -> Any:
    response = await client.get(url, params=params, headers=AUDITOR)
    assert response.status_code == 200, response.text
    return response.json()


async def tamper(app: FastAPI, *statements: str) -> None:
    """Change the ledger behind the service's back, as someone with database access could."""
    engine = app.state.database.engine
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(
                text("ALTER TABLE consent_event DISABLE TRIGGER consent_event_append_only")
            )
        else:
            await connection.execute(text("DROP TRIGGER consent_event_no_update"))
            await connection.execute(text("DROP TRIGGER consent_event_no_delete"))
        for statement in statements:
            await connection.execute(text(statement))
        if engine.dialect.name == "postgresql":
            await connection.execute(
                text("ALTER TABLE consent_event ENABLE TRIGGER consent_event_append_only")
            )


async def three_events(client: httpx.AsyncClient, subject_id: str) -> list[dict[str, Any]]:
    await set_consent(client, subject_id, *OPTIONAL, "given")
    await set_consent(client, subject_id, *OPTIONAL_2, "refused")
    await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
    return await all_events(client, subject_id)


# --- queries ------------------------------------------------------------------------------------


async def test_events_across_subjects_filter_and_page_both_ways(
    client: httpx.AsyncClient,
) -> None:
    for subject in ("a-1", "a-2"):
        await three_events(client, subject)
    oldest = await get(client, "/v1/audit/events", limit=4)
    assert len(oldest["items"]) == 4
    rest = await get(client, "/v1/audit/events", limit=4, cursor=oldest["next_cursor"])
    assert rest["next_cursor"] is None
    ids = [e["id"] for e in oldest["items"] + rest["items"]]
    assert len(set(ids)) == 6
    times = [e["recorded_at"] for e in oldest["items"] + rest["items"]]
    assert times == sorted(times)
    newest = await get(client, "/v1/audit/events", order="newest", limit=100)
    assert [e["id"] for e in newest["items"]] == ids[::-1]

    withdrawn = await get(client, "/v1/audit/events", state="withdrawn")
    assert {e["subject_id"] for e in withdrawn["items"]} == {"a-1", "a-2"}
    one = await get(
        client, "/v1/audit/events", subject_id="a-2", target=OPTIONAL[0], purpose=OPTIONAL[1]
    )
    assert [e["state"] for e in one["items"]] == ["given", "withdrawn"]
    by_actor = await get(
        client, "/v1/audit/events", actor="app", source="api", policy_version="2022-02"
    )
    assert len(by_actor["items"]) == 6
    later = await get(client, "/v1/audit/events", since=times[3])
    assert [e["id"] for e in later["items"]] == ids[3:]
    earlier = await get(client, "/v1/audit/events", until=times[3])
    assert [e["id"] for e in earlier["items"]] == ids[:3]
    bad = await client.get(
        "/v1/audit/events", params={"since": times[3], "until": times[0]}, headers=AUDITOR
    )
    assert bad.status_code == 422


async def test_who_could_lawfully_be_processed_at_an_instant(client: httpx.AsyncClient) -> None:
    await set_consent(client, "s-given", *OPTIONAL, "given")
    await set_consent(client, "s-refused", *OPTIONAL, "refused")
    withdrawn_later = await set_consent(client, "s-withdrawn", *OPTIONAL, "given")
    await asyncio.sleep(0.01)
    withdrawal = await set_consent(client, "s-withdrawn", *OPTIONAL, "withdrawn")
    params = {"target": OPTIONAL[0], "purpose": OPTIONAL[1]}

    then = await get(client, "/v1/audit/consents", as_of=withdrawn_later["recorded_at"], **params)
    assert [s["subject_id"] for s in then["items"]] == ["s-given", "s-withdrawn"]
    assert then["items"][1]["event_id"] == withdrawn_later["event_id"]
    now = await get(client, "/v1/audit/consents", as_of=withdrawal["recorded_at"], **params)
    assert [s["subject_id"] for s in now["items"]] == ["s-given"]
    paged = await get(
        client, "/v1/audit/consents", as_of=withdrawn_later["recorded_at"], limit=1, **params
    )
    assert paged["next_cursor"] is not None
    necessary = await client.get(
        "/v1/audit/consents",
        params={
            "as_of": withdrawal["recorded_at"],
            "target": "email",
            "purpose": "account_registration",
        },
        headers=AUDITOR,
    )
    assert necessary.status_code == 422


# --- export -------------------------------------------------------------------------------------


async def test_the_export_is_the_ledger_in_both_formats(client: httpx.AsyncClient) -> None:
    ledger = []
    for subject in ("e-1", "e-2", "e-3"):
        ledger += await three_events(client, subject)
    response = await client.get("/v1/audit/export", headers=AUDITOR)
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "attachment" in response.headers["content-disposition"]
    assert "content-length" not in response.headers  # streamed, not built up in memory first
    exported = [json.loads(line) for line in response.text.splitlines()]
    assert exported == ledger  # every field, in subject and sequence order

    response = await client.get("/v1/audit/export", params={"format": "csv"}, headers=AUDITOR)
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["hash"] for r in rows] == [e["hash"] for e in ledger]
    assert json.loads(rows[0]["evidence"]) == ledger[0]["evidence"]
    assert rows[0]["actor_id"] == "test-app"

    filtered = await client.get(
        "/v1/audit/export", params={"subject_id": "e-2", "state": "given"}, headers=AUDITOR
    )
    [only] = [json.loads(line) for line in filtered.text.splitlines()]
    assert (only["subject_id"], only["state"]) == ("e-2", "given")


async def test_an_export_during_heavy_writes_holds_no_half_written_change(
    client: httpx.AsyncClient,
) -> None:
    batch = {
        "changes": [
            {"target": t, "purpose": "service_improvement", "state": "given"}
            for t in ("gender", "age", "device.model")
        ]
    }

    async def writer(subject: str) -> None:
        for _ in range(8):
            response = await client.post(f"/v1/subjects/{subject}/consents", json=batch)
            assert response.status_code == 200

    async def exporter() -> list[dict[str, Any]]:
        await asyncio.sleep(0.05)
        response = await client.get("/v1/audit/export", headers=AUDITOR)
        return [json.loads(line) for line in response.text.splitlines()]

    *_, exported = await asyncio.gather(*(writer(f"w-{i}") for i in range(4)), exporter())
    per_subject: dict[str, list[int]] = {}
    for event in exported:
        per_subject.setdefault(event["subject_id"], []).append(event["seq"])
    for seqs in per_subject.values():
        assert seqs == list(range(1, len(seqs) + 1))  # a prefix of each chain…
        assert len(seqs) % 3 == 0  # …made of whole changes


# --- verification and checkpoints ---------------------------------------------------------------


async def verification(client: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = await get(client, "/v1/audit/verify")
    return result


async def test_an_untouched_ledger_verifies(client: httpx.AsyncClient) -> None:
    await three_events(client, "v-1")
    await client.post("/v1/audit/checkpoints", headers=OFFICER)
    report = await verification(client)
    assert report["ok"] is True
    assert (report["subjects"], report["events"], report["problems"]) == (1, 3, [])
    assert report["current_state"] == []
    assert report["checkpoint"]["signature_valid"] is True


@pytest.mark.parametrize(
    ("tampering", "seq", "problem"),
    [
        (["UPDATE consent_event SET state = 'given' WHERE subject_id = 'v-1' AND seq = 3"], 3, "edited"),
        (
            [
                "DELETE FROM consent WHERE subject_id = 'v-1' AND target_key = 'device.model'",
                "DELETE FROM consent_event WHERE subject_id = 'v-1' AND seq = 2",
            ],
            2,
            "gap",
        ),
        (
            [
                "UPDATE consent_event SET seq = 99 WHERE subject_id = 'v-1' AND seq = 2",
                "UPDATE consent_event SET seq = 2 WHERE subject_id = 'v-1' AND seq = 3",
                "UPDATE consent_event SET seq = 3 WHERE subject_id = 'v-1' AND seq = 99",
            ],
            2,
            "broken_link",
        ),
        (
            [
                "UPDATE consent_event SET seq = 4 WHERE subject_id = 'v-1' AND seq = 3",
                "INSERT INTO consent_event (id, subject_id, seq, target_key, purpose_key, state, "
                "previous_state, actor, actor_id, source, policy_version, recorded_at, evidence, "
                "prev_hash, hash) SELECT {forged_id}, subject_id, 3, target_key, purpose_key, "
                "'given', state, actor, actor_id, source, policy_version, recorded_at, evidence, "
                "hash, hash FROM consent_event WHERE subject_id = 'v-1' AND seq = 2",
            ],
            3,
            "edited",
        ),
    ],
    ids=["edited-field", "deleted-event", "reordered-events", "inserted-event"],
)  # fmt: skip
async def test_tampering_is_caught_at_the_first_broken_link(
    app: FastAPI,
    client: httpx.AsyncClient,
    backend: str,
    tampering: list[str],
    seq: int,
    problem: str,
) -> None:
    await three_events(client, "v-1")
    await three_events(client, "v-2")
    forged_id = "gen_random_uuid()" if backend == "postgresql" else "lower(hex(randomblob(16)))"
    await tamper(app, *(s.replace("{forged_id}", forged_id) for s in tampering))
    report = await verification(client)
    assert report["ok"] is False
    [found] = report["problems"]  # v-2 is intact
    assert (found["subject_id"], found["seq"], found["problem"]) == ("v-1", seq, problem)
    assert found["expected"] != found["found"]


async def test_cutting_off_the_newest_events_is_caught_by_the_checkpoint(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    events = await three_events(client, "v-1")
    await three_events(client, "v-2")
    await client.post("/v1/audit/checkpoints", headers=OFFICER)
    # Hide the withdrawal: remove the last event, point the current state back at the grant and
    # make the subject's head agree, so that the chain itself looks whole.
    await tamper(
        app,
        "UPDATE consent SET state = 'given', event_id = (SELECT event_id FROM consent "
        "WHERE subject_id = 'v-2' AND target_key = 'device.model') "
        "WHERE subject_id = 'v-1' AND target_key = 'gender'",
        "DELETE FROM consent_event WHERE subject_id = 'v-1' AND seq = 3",
        f"UPDATE subject SET last_seq = 2, head_hash = '{events[1]['hash']}' WHERE id = 'v-1'",
    )
    report = await verification(client)
    assert report["problems"] == []
    assert report["ok"] is False
    [truncated] = report["checkpoint"]["truncated"]
    assert (truncated["subject_id"], truncated["seq"], truncated["expected"]) == (
        "v-1",
        3,
        events[2]["hash"],
    )
    assert truncated["found"] is None


async def test_checkpoints_verify_with_the_public_key_alone(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await three_events(client, "c-1")
    created = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert created.status_code == 201
    checkpoint = created.json()
    assert (checkpoint["event_count"], checkpoint["subject_count"]) == (3, 1)
    listed = await get(client, "/v1/audit/checkpoints")
    assert listed["items"][0] == checkpoint

    pem = (await get(client, "/v1/audit/public-key"))["pem"]
    key = load_pem_public_key(pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    key.verify(bytes.fromhex(checkpoint["signature"]), checkpoint["signed_message"].encode())
    assert checkpoint["signed_message"].splitlines()[1:] == [
        checkpoint["id"],
        checkpoint["created_at"],
        "3",
        "1",
        checkpoint["merkle_root"],
        "none",
        "none",
    ]
    # A checkpoint edited in the database no longer verifies.
    async with app.state.database.engine.begin() as connection:
        await connection.execute(text("UPDATE checkpoint SET event_count = 2"))
    report = await verification(client)
    assert report["checkpoint"]["signature_valid"] is False
    assert report["ok"] is False


@pytest.mark.parametrize("rows_per_turn", [1, checkpoints.ROWS_PER_TURN])
async def test_the_merkle_root_is_what_the_readme_says(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, rows_per_turn: int
) -> None:
    """Also with the heads read a row at a time between turns of the event loop."""
    import hashlib

    monkeypatch.setattr(checkpoints, "ROWS_PER_TURN", rows_per_turn)

    heads = []
    for subject in ("m-b", "m-a", "m-c"):
        events = await three_events(client, subject)
        heads.append((subject, 3, events[-1]["hash"]))
    checkpoint = (await client.post("/v1/audit/checkpoints", headers=OFFICER)).json()

    def leaf(subject: str, seq: int, head: str) -> bytes:
        return hashlib.sha256(
            b"\0" + b"\0".join([subject.encode(), str(seq).encode(), head.encode()])
        ).digest()

    a, b, c = (leaf(*h) for h in sorted(heads))
    root = hashlib.sha256(b"\1" + hashlib.sha256(b"\1" + a + b).digest() + c).hexdigest()
    assert checkpoint["merkle_root"] == root


# --- statistics ---------------------------------------------------------------------------------


async def test_stats_count_changes_per_bucket(client: httpx.AsyncClient) -> None:
    await set_consent(client, "t-1", *OPTIONAL, "given")
    await set_consent(client, "t-1", *OPTIONAL, "given")  # a renewal
    await set_consent(client, "t-1", *OPTIONAL_2, "refused")
    await set_consent(client, "t-2", *OPTIONAL, "given")
    await set_consent(client, "t-2", *OPTIONAL, "withdrawn")
    today = datetime.now(UTC).date()
    day = await get(client, "/v1/audit/stats", bucket="day")
    assert day["items"] == [
        {
            "start": today.isoformat(),
            "given": 2,
            "renewed": 1,
            "refused": 1,
            "withdrawn": 1,
            "revoked": 0,
        }
    ]
    week = await get(client, "/v1/audit/stats", bucket="week", target=OPTIONAL[0])
    monday = today - timedelta(days=today.weekday())
    assert week["items"][0]["start"] == monday.isoformat()
    assert week["items"][0]["refused"] == 0
    month = await get(client, "/v1/audit/stats", bucket="month")
    assert month["items"][0]["start"] == today.replace(day=1).isoformat()


def readme_block(marker: str) -> dict[str, Any]:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    script = readme.split(f"<!-- {marker} -->")[1].split("```python")[1].split("```")[0]
    namespace: dict[str, Any] = {}
    exec(compile(script, "README.md", "exec"), namespace)
    return namespace


async def test_the_readme_scripts_check_an_export_and_a_checkpoint(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    for subject in ("r-1", "r-2", "r-3"):
        await three_events(client, subject)
    checkpoint = (await client.post("/v1/audit/checkpoints", headers=OFFICER)).json()
    response = await client.get(f"/v1/audit/checkpoints/{checkpoint['id']}/heads", headers=AUDITOR)
    heads = [
        (h["subject_id"], h["seq"], h["head_hash"])
        for h in map(json.loads, response.text.splitlines())
    ]
    export = tmp_path / "ledger.ndjson"
    export.write_text((await client.get("/v1/audit/export", headers=AUDITOR)).text)
    events = [json.loads(line) for line in export.read_text().splitlines()]

    chain = readme_block("auditor-script")["verify"]
    assert readme_block("auditor-export-script")["verify_export"](export, chain) == {}
    checkpoint_script = readme_block("auditor-checkpoint-script")
    assert checkpoint_script["merkle_root"](heads) == checkpoint["merkle_root"]
    assert checkpoint_script["cut_off"](heads, events) == []

    await tamper(app, "UPDATE consent_event SET reason = 'x' WHERE subject_id = 'r-2' AND seq = 2")
    export.write_text((await client.get("/v1/audit/export", headers=AUDITOR)).text)
    assert readme_block("auditor-export-script")["verify_export"](export, chain) == {"r-2": 2}
    assert checkpoint_script["cut_off"](heads, events[:-1]) == ["r-3"]
    missing = await client.get(
        "/v1/audit/checkpoints/00000000-0000-0000-0000-000000000000/heads", headers=AUDITOR
    )
    assert missing.status_code == 404


async def test_checkpoints_are_written_by_themselves_once_per_interval_across_workers(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    await three_events(client, "p-1")
    every_2s = settings.model_copy(update={"checkpoint_interval_seconds": 2})
    one, two = create_app(every_2s), create_app(every_2s)
    async with one.router.lifespan_context(one), two.router.lifespan_context(two):
        for _ in range(60):
            await asyncio.sleep(0.1)
            listed = await get(client, "/v1/audit/checkpoints")
            if listed["items"]:
                break
        await asyncio.sleep(1.2)  # both workers looked again within the interval
        listed = await get(client, "/v1/audit/checkpoints")
    assert len(listed["items"]) == 1
    assert listed["items"][0]["event_count"] == 3


async def test_a_checkpoint_signed_with_another_key_or_a_removed_one_is_caught(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    events = await three_events(client, "k-1")
    for _ in range(3):
        assert (await client.post("/v1/audit/checkpoints", headers=OFFICER)).status_code == 201
    assert (await verification(client))["checkpoint"]["checkpoints"] == 3
    # Cut the newest event, then sign the cut ledger with a key of one's own.
    await tamper(
        app,
        "UPDATE consent SET state = 'refused', event_id = (SELECT id FROM consent_event "
        "WHERE subject_id = 'k-1' AND seq = 2) WHERE subject_id = 'k-1' AND target_key = 'gender'",
        "DELETE FROM consent_event WHERE subject_id = 'k-1' AND seq = 3",
        f"UPDATE subject SET last_seq = 2, head_hash = '{events[1]['hash']}' WHERE id = 'k-1'",
    )
    async with app.state.database.write_sessions() as session, session.begin():
        await session.exec(text("DELETE FROM checkpoint_head"))  # type: ignore[call-overload]
    forged = await create_checkpoint(app.state.database, Ed25519PrivateKey.generate())
    assert forged is not None
    report = await verification(client)
    assert report["ok"] is False
    assert report["checkpoint"]["signature_valid"] is False
    assert any("not signed by this service" in p for p in report["checkpoint"]["chain_problems"])


async def test_removing_a_checkpoint_breaks_the_chain_of_checkpoints(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await three_events(client, "k-2")
    made = [(await client.post("/v1/audit/checkpoints", headers=OFFICER)).json() for _ in range(3)]
    assert made[1]["previous_id"] == made[0]["id"]
    middle = made[1]["id"]
    async with app.state.database.engine.begin() as connection:
        for table, column in (("checkpoint_head", "checkpoint_id"), ("checkpoint", "id")):
            await connection.execute(
                text(f"DELETE FROM {table} WHERE {column} = :id"),
                {
                    "id": middle
                    if app.state.database.dialect == "postgresql"
                    else middle.replace("-", "")
                },
            )
    report = await verification(client)
    assert report["ok"] is False
    assert any("does not follow" in p for p in report["checkpoint"]["chain_problems"])


async def test_no_checkpoint_is_signed_over_a_cut_ledger(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    events = await three_events(client, "k-3")
    await client.post("/v1/audit/checkpoints", headers=OFFICER)
    await tamper(
        app,
        "UPDATE consent SET state = 'refused', event_id = (SELECT id FROM consent_event "
        "WHERE subject_id = 'k-3' AND seq = 2) WHERE subject_id = 'k-3' AND target_key = 'gender'",
        "DELETE FROM consent_event WHERE subject_id = 'k-3' AND seq = 3",
        f"UPDATE subject SET last_seq = 2, head_hash = '{events[1]['hash']}' WHERE id = 'k-3'",
    )
    refused = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert refused.status_code == 409
    assert "k-3" in refused.json()["detail"]
    assert len((await get(client, "/v1/audit/checkpoints"))["items"]) == 1


async def test_a_current_state_that_disagrees_with_the_ledger_is_caught(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    events = await three_events(client, "k-4")
    grant = (
        events[0]["id"]
        if app.state.database.dialect == "postgresql"
        else events[0]["id"].replace("-", "")
    )
    async with app.state.database.engine.begin() as connection:  # no trigger guards this table
        await connection.execute(
            text(
                "UPDATE consent SET state = 'given', event_id = :grant "
                "WHERE subject_id = 'k-4' AND target_key = 'gender'"
            ),
            {"grant": grant},
        )
    report = await verification(client)
    assert report["ok"] is False
    assert report["problems"] == []
    [problem] = report["current_state"]
    assert (problem["subject_id"], problem["problem"], problem["seq"]) == (
        "k-4",
        "current_state_mismatch",
        3,
    )


async def test_checkpoints_taken_during_writes_count_what_their_heads_hold(
    client: httpx.AsyncClient,
) -> None:
    async def writer(subject: str) -> None:
        for state in ("given", "withdrawn") * 4:
            await set_consent(client, subject, *OPTIONAL, state)

    async def checkpointer() -> list[dict[str, Any]]:
        made = []
        for _ in range(5):
            made.append((await client.post("/v1/audit/checkpoints", headers=OFFICER)).json())
            await asyncio.sleep(0.01)
        return made

    *_, made = await asyncio.gather(*(writer(f"cw-{i}") for i in range(3)), checkpointer())
    for checkpoint in made:
        response = await client.get(
            f"/v1/audit/checkpoints/{checkpoint['id']}/heads", headers=AUDITOR
        )
        heads = [json.loads(line) for line in response.text.splitlines()]
        assert checkpoint["event_count"] == sum(h["seq"] for h in heads)


def held_first_rest(
    monkeypatch: pytest.MonkeyPatch, then: Exception | None = None
) -> tuple[asyncio.Event, asyncio.Event]:
    """A checkpoint's first rest (``Pace.turn``) is held until ``release`` is set, and then
    raises ``then`` if given; ``resting`` is set once it is held. Later rests take no time."""
    resting, release = asyncio.Event(), asyncio.Event()

    async def first_rest_held(self: checkpoints.Pace) -> None:
        if not resting.is_set():
            resting.set()
            await release.wait()
            if then is not None:
                raise then

    monkeypatch.setattr(checkpoints.Pace, "turn", first_rest_held)
    return resting, release


@pytest.mark.parametrize("per_statement", [1, checkpoints.HEADS_PER_STATEMENT])
async def test_a_checkpoints_heads_are_of_one_instant_while_it_rests(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, per_statement: int
) -> None:
    """On PostgreSQL the heads are copied a range of subjects at a time with rests between
    (on SQLite at once, and the first rest is the hashing's): changes made during a rest, to
    subjects copied already, still to be copied, or new, are in none of the heads."""
    monkeypatch.setattr(checkpoints, "HEADS_PER_STATEMENT", per_statement)
    for subject in ("i-1", "i-2", "i-3"):
        await set_consent(client, subject, *OPTIONAL, "given")
    resting, release = held_first_rest(monkeypatch)
    writing = asyncio.create_task(client.post("/v1/audit/checkpoints", headers=OFFICER))
    await asyncio.wait_for(resting.wait(), 30)
    for subject in ("i-1", "i-3"):
        await set_consent(client, subject, *OPTIONAL, "withdrawn")
    for subject in ("i-0", "i-4"):
        await set_consent(client, subject, *OPTIONAL, "given")
    release.set()
    made = await writing
    assert made.status_code == 201, made.text
    response = await client.get(f"/v1/audit/checkpoints/{made.json()['id']}/heads", headers=AUDITOR)
    heads = [json.loads(line) for line in response.text.splitlines()]
    assert [(h["subject_id"], h["seq"]) for h in heads] == [("i-1", 1), ("i-2", 1), ("i-3", 1)]
    assert (made.json()["subject_count"], made.json()["event_count"]) == (3, 3)
    assert (await verification(client))["ok"] is True


def paused_hashing(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Checkpoints stop before folding their root (the long part) until ``release`` is set."""
    hashing, release = asyncio.Event(), asyncio.Event()
    fold = checkpoints.stored_heads_root

    async def paused(session: Any, checkpoint: Any, pace: Any = None) -> str:
        hashing.set()
        await release.wait()
        return await fold(session, checkpoint, pace)

    monkeypatch.setattr(checkpoints, "stored_heads_root", paused)
    return hashing, release


async def pending_ids(app: FastAPI) -> list[str]:
    """The unsigned checkpoints' ids, as the API writes them."""
    async with app.state.database.engine.connect() as connection:
        found = await connection.execute(text("SELECT id FROM checkpoint WHERE signature = ''"))
        return [str(uuid.UUID(str(row[0]))) for row in found]


async def pending_rows(app: FastAPI) -> int:
    return len(await pending_ids(app))


async def test_a_checkpoint_being_hashed_holds_up_no_consent_change(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await three_events(client, "h-1")
    hashing, release = paused_hashing(monkeypatch)
    writing = asyncio.create_task(client.post("/v1/audit/checkpoints", headers=OFFICER))
    await asyncio.wait_for(hashing.wait(), 30)
    # The heads are copied and the long part holds no lock (on SQLite, the write lock): a
    # consent change goes through meanwhile.
    await set_consent(client, "h-1", *OPTIONAL, "given")
    # Until it is signed no reader sees the checkpoint, and no second one is begun.
    assert (await get(client, "/v1/audit/checkpoints"))["items"] == []
    [pending] = await pending_ids(app)
    heads = await client.get(f"/v1/audit/checkpoints/{pending}/heads", headers=AUDITOR)
    assert heads.status_code == 404
    report = await verification(client)
    assert report["ok"] is True
    assert report["checkpoint"] is None
    second = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert second.status_code == 409
    assert second.json()["type"].endswith("checkpoint-in-progress")
    assert second.headers["Retry-After"] == "60"
    periodic = await asyncio.wait_for(
        create_checkpoint(
            app.state.database, app.state.checkpoint_key, unless_newer_than=timedelta(0)
        ),
        30,
    )
    assert periodic is None
    release.set()
    made = await writing
    assert made.status_code == 201, made.text
    assert made.json()["event_count"] == 3  # as the heads were when it was begun
    assert (await get(client, "/v1/audit/checkpoints"))["items"] == [made.json()]
    assert (await verification(client))["ok"] is True


async def test_a_checkpoint_stopped_while_being_written_leaves_nothing_behind(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await three_events(client, "h-2")
    database, key = app.state.database, app.state.checkpoint_key
    fold = checkpoints.stored_heads_root
    hashing, release = paused_hashing(monkeypatch)
    stopped = asyncio.create_task(create_checkpoint(database, key))
    await asyncio.wait_for(hashing.wait(), 30)
    assert await pending_rows(app) == 1
    stopped.cancel()  # as at shutdown
    with pytest.raises(asyncio.CancelledError):
        await stopped
    assert await pending_rows(app) == 0
    # One left by a worker that died is given up once its lease lapses, and the writer that
    # outlived its lease is told so instead of signing.
    hashing.clear()
    outlived = asyncio.create_task(create_checkpoint(database, key))
    await asyncio.wait_for(hashing.wait(), 30)
    monkeypatch.setattr(checkpoints, "PENDING_LEASE", timedelta(0))
    monkeypatch.setattr(checkpoints, "stored_heads_root", fold)
    taken_over = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert taken_over.status_code == 201, taken_over.text
    release.set()
    with pytest.raises(checkpoints.CheckpointInProgress):
        await outlived
    assert await pending_rows(app) == 0
    assert (await get(client, "/v1/audit/checkpoints"))["items"] == [taken_over.json()]
    assert taken_over.json()["previous_id"] is None
    assert (await verification(client))["ok"] is True


@pytest.mark.parametrize("stop", ["cancelled", "failed"])
async def test_a_checkpoint_stopped_in_its_copy_leaves_nothing_behind(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """Stopped between two ranges of its copy (on PostgreSQL; on SQLite, whose copy is one
    statement, at its first rest after it): neither its pending row nor any head is left."""
    monkeypatch.setattr(checkpoints, "HEADS_PER_STATEMENT", 1)
    for subject in ("k-1", "k-2", "k-3"):
        await set_consent(client, subject, *OPTIONAL, "given")
    resting, release = held_first_rest(monkeypatch, then=RuntimeError("the database went away"))
    database, key = app.state.database, app.state.checkpoint_key
    stopped = asyncio.create_task(create_checkpoint(database, key))
    await asyncio.wait_for(resting.wait(), 30)
    assert await pending_rows(app) == 1
    if stop == "cancelled":
        stopped.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError if stop == "cancelled" else RuntimeError):
        await stopped
    assert await pending_rows(app) == 0
    async with database.engine.connect() as connection:
        left = await connection.execute(text("SELECT count(*) FROM checkpoint_head"))
        assert left.scalar_one() == 0
    monkeypatch.undo()
    made = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert made.status_code == 201, made.text
    assert made.json()["subject_count"] == 3


async def test_a_checkpoint_that_fails_to_be_signed_leaves_nothing_behind(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await three_events(client, "h-3")
    lock, calls = checkpoints._lock, []

    async def fails_to_sign(session: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # step 1, then step 3
            raise RuntimeError("the database went away")
        await lock(session)

    monkeypatch.setattr(checkpoints, "_lock", fails_to_sign)
    with pytest.raises(RuntimeError):
        await create_checkpoint(app.state.database, app.state.checkpoint_key)
    assert await pending_rows(app) == 0
    monkeypatch.setattr(checkpoints, "_lock", lock)
    made = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert made.status_code == 201, made.text


@pytest.mark.parametrize("per_statement", [1, 2, checkpoints.HEADS_PER_STATEMENT])
@pytest.mark.parametrize("grown_again", [False, True])
async def test_a_cut_made_after_the_ledger_was_checked_is_caught_in_the_copy(
    app: FastAPI,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    grown_again: bool,
    per_statement: int,
) -> None:
    monkeypatch.setattr(checkpoints, "HEADS_PER_STATEMENT", per_statement)
    for neighbour in ("h-3", "h-40", "h-5"):  # in ranges of their own, or shared
        await set_consent(client, neighbour, *OPTIONAL, "given")
    events = await three_events(client, "h-4")
    await client.post("/v1/audit/checkpoints", headers=OFFICER)
    check, calls = checkpoints.check_against, []

    async def then_cut(session: Any, checkpoint: Any, pace: Any = None) -> Any:
        found = await check(session, checkpoint, pace)  # finds the ledger whole ...
        calls.append(found)
        if len(calls) > 1:
            return found
        await tamper(  # ... and then the newest event is cut, before the heads are copied
            app,
            "UPDATE consent SET state = 'refused', event_id = (SELECT id FROM consent_event "
            "WHERE subject_id = 'h-4' AND seq = 2) "
            "WHERE subject_id = 'h-4' AND target_key = 'gender'",
            "DELETE FROM consent_event WHERE subject_id = 'h-4' AND seq = 3",
            f"UPDATE subject SET last_seq = 2, head_hash = '{events[1]['hash']}' WHERE id = 'h-4'",
        )
        if grown_again:  # past the head the checkpoint saw, so the copy alone looks fine
            await set_consent(client, "h-4", *OPTIONAL, "given")
            await set_consent(client, "h-4", *OPTIONAL, "withdrawn")
        return found

    monkeypatch.setattr(checkpoints, "check_against", then_cut)
    refused = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("ledger-no-longer-extends-checkpoint")
    assert "h-4" in refused.json()["detail"]
    assert await pending_rows(app) == 0
    assert len((await get(client, "/v1/audit/checkpoints"))["items"]) == 1


async def test_a_checkpoint_renews_its_lease_while_it_is_written(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await three_events(client, "h-5")
    monkeypatch.setattr(checkpoints, "PENDING_LEASE", timedelta(seconds=0.3))
    copy, copying = checkpoints._copy, []

    async def timed(database: Any, checkpoint: Any) -> None:
        copying.append(utcnow())
        await copy(database, checkpoint)
        copying.append(utcnow())

    monkeypatch.setattr(checkpoints, "_copy", timed)
    hashing, release = paused_hashing(monkeypatch)
    writing = asyncio.create_task(client.post("/v1/audit/checkpoints", headers=OFFICER))
    await asyncio.wait_for(hashing.wait(), 30)

    async def created_at(signed: bool) -> datetime:
        async with app.state.database.read_sessions() as session:
            found = await session.exec(
                select(Checkpoint.created_at).where(
                    checkpoints.SIGNED if signed else ~checkpoints.SIGNED
                )
            )
            return found.one()

    begun = await created_at(signed=False)
    for _ in range(300):
        await asyncio.sleep(0.05)
        if await created_at(signed=False) != begun:
            break
    renewed = await created_at(signed=False)
    assert renewed > begun
    assert renewed > copying[1]
    release.set()
    made = await writing
    assert made.status_code == 201, made.text
    # Signed with the instant its heads were copied, not the last renewal; and a renewal that
    # comes after the signing leaves it so.
    signed_at = await created_at(signed=True)
    assert copying[0] <= signed_at <= copying[1]
    late = asyncio.create_task(checkpoints._renew(app.state.database, uuid.UUID(made.json()["id"])))
    await asyncio.sleep(0.4)
    late.cancel()
    assert await created_at(signed=True) == signed_at
    assert (await verification(client))["ok"] is True


async def test_postgresql_plans_a_checkpoint_knowing_its_copy(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Unanalysed, the planner took a new checkpoint's copy for one row and compared it with
    the previous heads by scanning it once per head: quadratic, hours on 151,000 subjects."""
    if app.state.database.dialect != "postgresql":
        pytest.skip("SQLite's planner keeps no statistics unless asked")
    await three_events(client, "h-6")
    await client.post("/v1/audit/checkpoints", headers=OFFICER)
    query = "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'checkpoint_head'"
    async with app.state.database.engine.connect() as connection:
        before = (await connection.execute(text(query))).scalar_one()
    made = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert made.status_code == 201, made.text
    for _ in range(100):  # the statistics collector reports a moment later
        async with app.state.database.engine.connect() as connection:
            after = (await connection.execute(text(query))).scalar_one()
        if after is not None and (before is None or after > before):
            break
        await asyncio.sleep(0.05)
    assert after is not None
    assert before is None or after > before


async def test_postgresql_analyses_a_checkpoints_copy_from_a_small_sample(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Enough for the planner to know one checkpoint's size, a tenth of the default's work."""
    if app.state.database.dialect != "postgresql":
        pytest.skip("SQLite's planner keeps no statistics unless asked")
    for n in range(30):
        await set_consent(client, f"s-{n:02}", *OPTIONAL, "given")
    made = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert made.status_code == 201, made.text
    query = (
        "SELECT cardinality(histogram_bounds::text::text[]) FROM pg_stats "
        "WHERE tablename = 'checkpoint_head' AND attname = 'subject_id'"
    )
    async with app.state.database.engine.connect() as connection:
        assert (await connection.execute(text(query))).scalar_one() == 11  # target 10, not 100
        assert (await connection.execute(text("SHOW default_statistics_target"))).scalar() == "100"


async def test_postgresql_runs_a_checkpoints_statements_on_one_core_without_jit(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In each of its transactions, and only in them: its connections go back to the pool
    with the server's settings."""
    if app.state.database.dialect != "postgresql":
        pytest.skip("PostgreSQL's settings")
    await three_events(client, "j-1")
    await client.post("/v1/audit/checkpoints", headers=OFFICER)  # the next one compares with it
    seen: dict[int, list[tuple[str, str]]] = {}

    async def settings(session: Any) -> tuple[int, tuple[str, str]]:
        shown = await session.exec(
            text(
                "SELECT pg_backend_pid(), current_setting('jit'), "
                "current_setting('max_parallel_workers_per_gather')"
            )
        )
        pid, jit, workers = shown.one()
        return pid, (jit, workers)

    ranges, fold = checkpoints._ranges, checkpoints.stored_heads_root

    async def ranges_seen(session: Any, *args: Any) -> Any:
        pid, found = await settings(session)
        seen.setdefault(pid, []).append(found)
        async for bounds in ranges(session, *args):
            yield bounds

    async def fold_seen(session: Any, *args: Any) -> str:
        pid, found = await settings(session)
        seen.setdefault(pid, []).append(found)
        return await fold(session, *args)

    async with app.state.database.read_sessions() as session:
        _, served = await settings(session)
    assert served != ("off", "0")  # the server's defaults, or this test would show nothing
    monkeypatch.setattr(checkpoints, "_ranges", ranges_seen)
    monkeypatch.setattr(checkpoints, "stored_heads_root", fold_seen)
    made = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert made.status_code == 201, made.text
    # the comparison before the copy, the copy, the two comparisons after it, the root
    assert sorted(found for each in seen.values() for found in each) == [("off", "0")] * 5
    back: dict[int, tuple[str, str]] = {}
    for _ in range(200):  # until each of the job's connections has been taken from the pool
        async with app.state.database.read_sessions() as session:
            pid, found = await settings(session)
            back[pid] = found
        if set(seen) <= set(back):
            break
    assert {pid: back[pid] for pid in seen} == dict.fromkeys(seen, served)


async def test_a_checkpoint_rests_three_times_as_long_as_it_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, rests = [100.0], []

    async def rest(seconds: float) -> None:
        rests.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(checkpoints, "asyncio", SimpleNamespace(sleep=rest))
    pace = checkpoints.Pace()
    for work in (0.004, 0.010, 0.0):
        clock[0] += work
        await pace.turn()
    assert rests == pytest.approx([0.012, 0.030, 0.0])  # a quarter of the loop at most


async def test_a_checkpoint_rests_between_all_its_turns(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for subject in ("t-1", "t-2", "t-3"):
        await set_consent(client, subject, *OPTIONAL, "given")
    await client.post("/v1/audit/checkpoints", headers=OFFICER)  # the next one checks this one
    monkeypatch.setattr(checkpoints, "ROWS_PER_TURN", 1)
    turns = []

    async def turn(self: checkpoints.Pace) -> None:
        turns.append(self)

    monkeypatch.setattr(checkpoints.Pace, "turn", turn)
    made = await client.post("/v1/audit/checkpoints", headers=OFFICER)
    assert made.status_code == 201, made.text
    # Three heads folded into the root, one turn each (they are compared in the database).
    assert len(turns) >= 3


@pytest.mark.parametrize(
    ("url", "position"),
    [
        ("/v1/audit/events", {"t": "2026-01-01T00:00:00", "id": "00000000-0000-0000-0000-000000000000"}),
        ("/v1/audit/events", {"t": "9999-12-31T23:59:59-14:00", "id": "00000000-0000-0000-0000-000000000000"}),
        ("/v1/audit/checkpoints", {"t": "0001-01-01T00:00:00+14:00"}),
        ("/v1/audit/consents", {"s": "a\u0000b"}),
        ("/v1/audit/consents", {"s": "\ud800"}),
    ],
)  # fmt: skip
async def test_crafted_cursors_are_422(
    client: httpx.AsyncClient, url: str, position: dict[str, str]
) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")
    params = {
        "cursor": cursor,
        "as_of": "2026-01-01T00:00:00Z",
        "target": OPTIONAL[0],
        "purpose": OPTIONAL[1],
    }
    response = await client.get(url, params=params, headers=AUDITOR)
    assert response.status_code == 422, response.text
