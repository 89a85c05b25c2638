"""The command line: clear one-line errors, and migrate on a fresh database."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


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
