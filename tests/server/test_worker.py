"""``consent-ledger worker`` processes killed with SIGKILL in the middle of deliveries: nothing is
lost, duplicates carry the same ``webhook-id``, and no message is ever in flight twice at once."""

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.factories import KEYS, OPTIONAL, TEST_SECRET, auth
from tests.receiver import receiving
from tests.server.test_server import running_server

pytestmark = pytest.mark.server

KILLS = int(os.environ.get("WORKER_KILLS", "5"))
MESSAGES = 40
DELAY = 0.2  # the receiver's answer takes this long, so kills land mid-delivery
TIMEOUT = 1  # a delivery's time-out; the claim lasts twice this + 1 s


@contextmanager
def worker(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_LEDGER_")}
    log = (cwd / "worker.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=clean | env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
        log.close()


def test_workers_killed_mid_delivery_lose_nothing(database_url: str, tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": database_url,
        "CONSENT_LEDGER_SECRET_KEY": TEST_SECRET,
        "CONSENT_LEDGER_WEBHOOK_WORKER": "off",
        "CONSENT_LEDGER_WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
        "CONSENT_LEDGER_WEBHOOK_POLL_SECONDS": "0.1",
        "CONSENT_LEDGER_LOG_LEVEL": "warning",
    }
    with running_server(env, tmp_path) as base, receiving(delay=DELAY) as receiver:
        with httpx.Client(base_url=base, timeout=30, headers=auth(KEYS["officer"])) as officer:
            created = officer.post(
                "/v1/recipients", json={"name": "p", "kind": "processor", "url": receiver.url}
            )
            assert created.status_code == 201, created.text
            receiver.secret = created.json()["secret"]
            recipient_id = created.json()["id"]
        with httpx.Client(base_url=base, timeout=30, headers=auth(KEYS["app"])) as app:
            for n in range(MESSAGES):
                url = f"/v1/subjects/s-{n}/consents/{OPTIONAL[0]}/{OPTIONAL[1]}"
                assert app.put(url, json={"state": "given"}).status_code == 200
                assert app.put(url, json={"state": "withdrawn"}).status_code == 200

        mid_delivery = 0
        for _ in range(KILLS):
            seen = len(receiver.received)
            with worker(env, tmp_path) as process:
                deadline = time.monotonic() + 30
                while len(receiver.received) == seen:
                    assert process.poll() is None, (tmp_path / "worker.log").read_text()
                    assert time.monotonic() < deadline, "the worker delivered nothing"
                    time.sleep(0.01)
                time.sleep(random.uniform(0, DELAY / 2))  # before its answer
                with receiver.lock:
                    mid_delivery += any(not r.finished for r in receiver.received[seen:])
                process.kill()
                process.wait()
        # Two workers finish the job; the dead ones' claims lapse first.
        with (
            worker(env, tmp_path),
            worker(env, tmp_path),
            httpx.Client(base_url=base, timeout=30, headers=auth(KEYS["auditor"])) as auditor,
        ):
            deadline = time.monotonic() + 60
            while True:
                listed = auditor.get(
                    f"/v1/recipients/{recipient_id}/deliveries", params={"limit": 1000}
                ).json()["items"]
                if [d["status"] for d in listed] == ["delivered"] * MESSAGES:
                    break
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)

    accepted = receiver.delivered_ids
    lost = MESSAGES - len(set(accepted))
    duplicated = len(accepted) - len(set(accepted))
    print(
        f"\n{MESSAGES} messages, worker killed {KILLS} times ({mid_delivery} with a delivery "
        f"under way): {lost} lost, {duplicated} processed twice by the receiver, "
        f"{len(receiver.received)} attempts in all"
    )
    assert lost == 0
    assert mid_delivery >= 1
    assert all(r.signature_ok for r in receiver.received)
    # Never in flight twice at once: a message is taken again only once its claim has lapsed.
    by_id: dict[str, list[float]] = {}
    for record in receiver.received:
        by_id.setdefault(record.webhook_id, []).append(record.started)
    for starts in by_id.values():
        gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:], strict=False)]
        assert all(gap > DELAY for gap in gaps), gaps
