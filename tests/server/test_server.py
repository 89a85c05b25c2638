"""Against real ``consent-ledger serve --workers 2`` processes, as production runs it."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.test_chain import recompute
from tests.factories import KEYS, TEST_SECRET, auth

pytestmark = pytest.mark.server

ROUNDS = int(os.environ.get("STALE_ALLOW_ROUNDS", "300"))
PAIR = ("gender", "service_improvement")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_server(env: dict[str, str], cwd: Path, workers: int = 2) -> Iterator[str]:
    """``consent-ledger serve`` in ``cwd``, ready; its output goes to ``cwd/server.log``."""
    port = _free_port()
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONSENT_LEDGER_") and k != "DATABASE_URL"
    }
    log_path = cwd / "server.log"
    log = log_path.open("a")
    command = [sys.executable, "-m", "app.cli", "serve", "--no-access-log", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", str(workers)],
        env=clean | {"CONSENT_LEDGER_LOG_LEVEL": "warning"} | env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
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


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[str]:
    env = {"DATABASE_URL": database_url, "CONSENT_LEDGER_SECRET_KEY": TEST_SECRET}
    with running_server(env, tmp_path) as base:
        yield base


def _fresh_connections(base: str, key: str = KEYS["app"]) -> httpx.Client:
    """Every request on a new connection, so the kernel spreads them over both workers."""
    return httpx.Client(
        base_url=base,
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=30,
        headers=auth(key),
    )


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
    with httpx.Client(base_url=server, timeout=30, headers=auth(KEYS["app"])) as client:
        events = client.get(f"/v1/subjects/{subject_id}/events", params={"limit": 1000}).json()[
            "items"
        ]
    assert len(events) == 50
    recompute(events)


def test_a_revoked_key_stops_working_at_once_on_every_worker(server: str) -> None:
    with _fresh_connections(server, KEYS["admin"]) as admin:
        created = admin.post("/v1/keys", json={"name": "short-lived", "role": "auditor"})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        with _fresh_connections(server, key) as caller:
            before = [caller.get("/v1/catalogue").status_code for _ in range(20)]
            assert admin.post("/v1/keys/short-lived/revocation").status_code == 200
            after = [caller.get("/v1/catalogue").status_code for _ in range(40)]
    assert before == [200] * 20
    assert after == [401] * 40


def test_the_first_embedded_start_prints_an_admin_key_once(tmp_path: Path) -> None:
    with running_server({}, tmp_path, workers=1) as base:
        output = (tmp_path / "server.log").read_text()
        [key] = [line.strip() for line in output.splitlines() if line.strip().startswith("clk_")]
        assert "shown only this once" in output
        with httpx.Client(base_url=base, headers=auth(key)) as admin:
            keys = admin.get("/v1/keys")
            assert keys.status_code == 200
            assert [k["name"] for k in keys.json()["items"]] == ["first-admin"]
    secret = tmp_path / "consent-ledger.secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    with running_server({}, tmp_path, workers=1):
        pass
    assert (tmp_path / "server.log").read_text().count("clk_") == 1
