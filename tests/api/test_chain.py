"""The hash chain: concurrent writers never fork it, and an auditor can recompute it."""

import asyncio
import hashlib
import json
from typing import Any

import httpx
import pytest

from tests.factories import OPTIONAL, all_events, set_consent


def recompute(events: list[dict[str, Any]]) -> None:
    """What an auditor does with the README's recipe: every link, from the API's JSON alone."""
    prev = "0" * 64
    for expected_seq, event in enumerate(events, start=1):
        assert event["seq"] == expected_seq
        assert event["prev_hash"] == prev
        fields = {k: v for k, v in event.items() if k != "hash"}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == event["hash"]
        prev = event["hash"]


async def test_50_concurrent_writes_leave_one_contiguous_linked_chain(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    targets = ["gender", "age", "email", "device.model", "device.imei"]

    async def write(i: int) -> int:
        response = await client.put(
            f"/v1/subjects/{subject_id}/consents/{targets[i % 5]}/service_improvement",
            json={"state": "given" if i % 2 == 0 else "refused"},
        )
        return response.status_code

    statuses = await asyncio.gather(*(write(i) for i in range(50)))
    assert statuses == [200] * 50
    events = await all_events(client, subject_id)
    assert len(events) == 50
    recompute(events)


async def test_the_hash_covers_unicode_evidence_and_optional_fields(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    await set_consent(
        client,
        subject_id,
        *OPTIONAL,
        "given",
        evidence={"notice": "同意书 v3 — “quoted”", "screen": "设置"},
        locale="zh-Hans-CN",
        expires_at="2999-12-31T23:59:59.5+08:00",
    )
    await set_consent(client, subject_id, *OPTIONAL, "withdrawn")
    events = await all_events(client, subject_id)
    assert events[0]["expires_at"] == "2999-12-31T15:59:59.500000Z"
    recompute(events)


async def test_the_readme_recipe_verifies_a_real_chain(
    client: httpx.AsyncClient, subject_id: str
) -> None:
    """The verification script in the README, run as printed, on events from the API."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    script = readme.split("<!-- auditor-script -->")[1].split("```python")[1].split("```")[0]
    for state in ("given", "withdrawn", "given"):
        await set_consent(client, subject_id, *OPTIONAL, state)
    events = await all_events(client, subject_id)
    namespace: dict[str, Any] = {}
    exec(compile(script, "README.md", "exec"), namespace)
    assert namespace["verify"](events) is None
    events[1]["state"] = "given"
    assert namespace["verify"](events) == 2


async def test_the_database_refuses_to_update_or_delete_an_event(
    client: httpx.AsyncClient, subject_id: str, database_url: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine

    await set_consent(client, subject_id, *OPTIONAL, "given")
    engine = create_async_engine(database_url)
    try:
        for statement in (
            "UPDATE consent_event SET state = 'refused'",
            "DELETE FROM consent_event",
        ):
            async with engine.connect() as connection:
                with pytest.raises(DBAPIError, match="append-only"):
                    await connection.execute(text(statement))
    finally:
        await engine.dispose()
    [event] = await all_events(client, subject_id)
    assert event["state"] == "given"
