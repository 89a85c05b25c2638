"""The command line: clear one-line errors, and migrate on a fresh database."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import normalise_database_url
from tests.factories import OPTIONAL, TEST_SECRET, set_consent


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONSENT_LEDGER_") and k != "DATABASE_URL"
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=clean | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CONSENT_LEDGER_PORT": "eighty"}, "CONSENT_LEDGER_PORT"),
        ({"CONSENT_LEDGER_WORKERS": "0"}, "CONSENT_LEDGER_WORKERS"),
        ({"CONSENT_LEDGER_LOG_LEVEL": "loud"}, "CONSENT_LEDGER_LOG_LEVEL"),
        ({"DATABASE_URL": "mysql://localhost/x"}, "DATABASE_URL"),
        ({"CONSENT_LEDGER_SECRET_KEY": "changeme"}, "CONSENT_LEDGER_SECRET_KEY"),
        ({"CONSENT_LEDGER_SECRET_KEY": ""}, "CONSENT_LEDGER_SECRET_KEY"),
        ({"CONSENT_LEDGER_SECRET_KEY": "ab" * 30}, "CONSENT_LEDGER_SECRET_KEY"),
        ({"CONSENT_LEDGER_SECRET_KEY": "0123456789" * 4}, "CONSENT_LEDGER_SECRET_KEY"),
        (
            {"CONSENT_LEDGER_SECRET_KEY": "please-change-this-secret-in-production"},
            "CONSENT_LEDGER_SECRET_KEY",
        ),
    ],
)
def test_invalid_settings_fail_with_one_clear_line(
    tmp_path: Path, env: dict[str, str], names: str
) -> None:
    result = run_cli("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"consent-ledger: invalid setting {names}")
    assert "Traceback" not in result.stderr


def test_migrate_creates_the_default_sqlite_database_in_the_working_directory(
    tmp_path: Path,
) -> None:
    result = run_cli("migrate", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "consent-ledger.db").is_file()
    again = run_cli("migrate", env={}, cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = run_cli(
        "migrate", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("consent-ledger: cannot migrate the database")
    assert "Traceback" not in result.stderr


def test_serving_postgresql_without_a_signing_secret_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    result = run_cli(
        "serve", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "consent-ledger: CONSENT_LEDGER_SECRET_KEY is required with PostgreSQL (it signs subject "
        "tokens, and every instance must share it); generate one with "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
    ]


def test_a_secret_file_others_can_read_stops_the_embedded_service(tmp_path: Path) -> None:
    secret = tmp_path / "consent-ledger.secret"
    secret.write_text("s3cr3t-" * 8)
    secret.chmod(0o644)
    result = run_cli("serve", env={}, cwd=tmp_path)
    assert result.returncode == 1
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_are_created_listed_and_revoked_from_the_command_line(
    tmp_path: Path, database_url: str
) -> None:
    env = {"DATABASE_URL": database_url, "CONSENT_LEDGER_SECRET_KEY": TEST_SECRET}
    created = run_cli(
        "keys", "create", "--role", "auditor", "--name", "dpo-laptop", env=env, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("clk_")

    listing = run_cli("keys", "list", env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    [row] = [line for line in listing.stdout.splitlines() if line.startswith("dpo-laptop")]
    assert row.split()[1:3] == ["auditor", key[:10] + "…"]
    assert key not in listing.stdout

    again = run_cli(
        "keys", "create", "--role", "app", "--name", "dpo-laptop", env=env, cwd=tmp_path
    )
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "consent-ledger: a key named 'dpo-laptop' exists (names are never reused, even after revocation)"
    ]
    bad = run_cli("keys", "create", "--role", "app", "--name", "has space", env=env, cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.startswith("consent-ledger: invalid key name 'has space'")

    revoked = run_cli("keys", "revoke", "dpo-laptop", env=env, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    listing = run_cli("keys", "list", env=env, cwd=tmp_path)
    [row] = [line for line in listing.stdout.splitlines() if line.startswith("dpo-laptop")]
    assert row.split()[-1] != "-"
    missing = run_cli("keys", "revoke", "nobody", env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "consent-ledger: no key named 'nobody'"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_secret_file_of_another_user_stops_the_embedded_service(tmp_path: Path) -> None:
    secret = tmp_path / "consent-ledger.secret"
    secret.write_text("Zq8" + "x7Kp2mV9nR4tL6wB1cD3fG5hJ0" * 2)
    secret.chmod(0o600)
    os.chown(secret, 65534, 65534)
    result = run_cli("serve", env={}, cwd=tmp_path)
    assert result.returncode == 1
    assert "belongs to another user" in result.stderr


def test_a_secret_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    result = run_cli(
        "serve",
        env={"CONSENT_LEDGER_SECRET_KEY_FILE": str(tmp_path / "not-a-dir" / "x.secret")},
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("consent-ledger: cannot create the signing secret file")
    assert "Traceback" not in result.stderr


async def test_export_and_verify_from_the_command_line(
    tmp_path: Path, database_url: str, client: httpx.AsyncClient
) -> None:
    for subject in ("x-1", "x-2"):
        await set_consent(client, subject, *OPTIONAL, "given")
        await set_consent(client, subject, *OPTIONAL, "withdrawn")
    env = {"DATABASE_URL": database_url, "CONSENT_LEDGER_SECRET_KEY": TEST_SECRET}
    out = tmp_path / "ledger.csv"
    exported = run_cli(
        "export", "--format", "csv", "-o", str(out), "--subject", "x-2", env=env, cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == f"wrote 2 events to {out}"
    lines = out.read_text().splitlines()
    assert lines[0].startswith("id,subject_id,seq,")
    assert len(lines) == 3

    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK: 4 events of 2 subjects checked")

    engine = create_async_engine(normalise_database_url(database_url))
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE subject SET head_hash = 'f00d' WHERE id = 'x-1'"))
    await engine.dispose()
    broken = run_cli("verify", "--json", env=env, cwd=tmp_path)
    assert broken.returncode == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False
    assert report["problems"][0]["problem"] == "head_mismatch"


def test_export_refuses_bad_filters_in_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "export", "-o", "x", "--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z",
        env={}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "consent-ledger: until must be after since"
