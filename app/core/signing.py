"""The secret that signs subject tokens.

With PostgreSQL it must come from the settings (every instance has to share it). On the embedded
SQLite default it is generated on first start and kept in a file only its owner can read, beside
the database, so the quick start needs no configuration and tokens survive a restart.
"""

import contextlib
import os
import secrets
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from app.core.config import Settings, check_secret_strength


class SecretError(RuntimeError):
    """The signing secret is missing, weak or unsafely stored; the service must not start."""


def secret_file(settings: Settings) -> Path:
    if settings.secret_key_file is not None:
        return settings.secret_key_file
    database = make_url(settings.database_url).database
    if not database or database == ":memory:":
        return Path("consent-ledger.secret")
    return Path(database).with_suffix(".secret")


def load_signing_secret(settings: Settings) -> str:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    if not settings.is_sqlite:
        raise SecretError(
            "CONSENT_LEDGER_SECRET_KEY is required with PostgreSQL (it signs subject tokens, and "
            "every instance must share it); generate one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    path = secret_file(settings)
    if not path.exists():
        _create(path)
    return _read(path)


def _create(path: Path) -> None:
    """Write a new secret so that no reader ever sees a half-written file, even if several
    workers start at once: write a private temporary file, then link it into place (which fails
    if another process got there first)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise SecretError(f"cannot create the signing secret file {path}: {exc}") from None
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker made it first: use theirs
            os.link(temporary, path)
    except OSError as exc:
        raise SecretError(f"cannot create the signing secret file {path}: {exc}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _read(path: Path) -> str:
    try:
        status = path.stat()
        if status.st_uid != os.getuid():
            raise SecretError(
                f"the signing secret file {path} belongs to another user; "
                "remove it (a new one is made) or set CONSENT_LEDGER_SECRET_KEY"
            )
        if status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"the signing secret file {path} can be read by other users; "
                f"run `chmod 600 {path}` and start again"
            )
        secret = path.read_text().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the signing secret file {path}: {exc}") from None
    try:
        check_secret_strength(secret)
    except ValueError as exc:
        raise SecretError(f"the signing secret in {path} {exc}") from None
    return secret
