"""Against real ``consent-ledger serve --workers 2`` processes, as production runs it."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.api.test_chain import recompute

pytestmark = pytest.mark.server

ROUNDS = int(os.environ.get("STALE_ALLOW_ROUNDS", "300"))
PAIR = ("gender", "service_improvement")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_LEDGER_")}
    env |= {"DATABASE_URL": database_url, "CONSENT_LEDGER_LOG_LEVEL": "warning"}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            "--no-access-log",
        ],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _fresh_connections(base: str) -> httpx.Client:
    """Every request on a new connection, so the kernel spreads them over both workers."""
    return httpx.Client(base_url=base, limits=httpx.Limits(max_keepalive_connections=0), timeout=30)


def test_a_withdrawal_is_seen_by_the_very_next_check_on_any_worker(
    server: str, subject_id: str
) -> None:
    url = f"/v1/subjects/{subject_id}/consents/{PAIR[0]}/{PAIR[1]}"
    params = {"subject_id": subject_id, "target": PAIR[0], "purpose": PAIR[1]}
    stale_allows = missed_grants = 0
    with _fresh_connections(server) as client:
        for _ in range(ROUNDS):
            assert client.put(url, json={"state": "given"}).status_code == 200
            decision = client.get("/v1/checks", params=params).json()["decisions"][0]
            missed_grants += not decision["allowed"]
            assert client.put(url, json={"state": "withdrawn"}).status_code == 200
            decision = client.get("/v1/checks", params=params).json()["decisions"][0]
            stale_allows += decision["allowed"]
    print(f"\n{ROUNDS} withdraw-then-check rounds over 2 workers: {stale_allows} stale allows")
    assert stale_allows == 0
    assert missed_grants == 0


def test_50_concurrent_writes_from_two_workers_keep_the_chain_whole(
    server: str, subject_id: str
) -> None:
    targets = ["gender", "age", "email", "device.model", "device.imei"]

    def write(i: int) -> int:
        with _fresh_connections(server) as client:
            return client.put(
                f"/v1/subjects/{subject_id}/consents/{targets[i % 5]}/service_improvement",
                json={"state": "given" if i % 2 else "refused"},
            ).status_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        statuses = list(pool.map(write, range(50)))
    assert statuses == [200] * 50
    with httpx.Client(base_url=server, timeout=30) as client:
        events = client.get(f"/v1/subjects/{subject_id}/events", params={"limit": 1000}).json()[
            "items"
        ]
    assert len(events) == 50
    recompute(events)
