"""Settings, read from the environment (prefix ``CONSENT_LEDGER_``) or a ``.env`` file."""

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, Request
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./consent-ledger.db"

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def normalise_database_url(url: str) -> str:
    """Accept the URLs people paste and return the async driver's form of them."""
    url = url.strip()
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ValueError(
        "must start with postgresql:// (PostgreSQL) or sqlite:/// (embedded SQLite file)"
    )


# Under which age a subject is a child, per jurisdiction. CN: the policy ("we consider anyone under
# the age of 14 to be a child") and PIPL art. 28. EU: GDPR art. 8 says 16 unless a member state
# chose lower, down to 13; the countries below did.
DEFAULT_CHILD_AGES: dict[str, int] = {
    "CN": 14,
    "EU": 16,
    **dict.fromkeys(("BE", "DK", "EE", "FI", "LV", "MT", "PT", "SE"), 13),
    **dict.fromkeys(("AT", "BG", "CY", "ES", "IT", "LT"), 14),
    **dict.fromkeys(("CZ", "FR", "GR", "SI"), 15),
}

EU_MEMBERS = frozenset(
    {
        "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
        "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
    }
)  # fmt: skip
DEFAULT_REQUEST_DEADLINES: dict[str, dict[str, str]] = {
    "default": {"due": "30d", "max_extension": "0d"},  # the policy: within thirty days
    "EU": {"due": "1m", "max_extension": "2m"},  # GDPR art. 12(3)
}

MIN_SECRET_LENGTH = 32
# Words that give away a placeholder or a value someone typed instead of generating. Six letters
# or more, so a random value contains one by chance about once in a billion.
_PLACEHOLDER_WORDS = (
    "change", "secret", "password", "example", "default", "develop", "placeholder", "replace",
    "insecure", "consent-ledger",
)  # fmt: skip


def check_secret_strength(secret: str) -> None:
    """Refuse secrets someone could guess: empty, short, a placeholder, or repetitive."""
    stripped = secret.strip()
    if not stripped:
        raise ValueError("is empty; use a long random value")
    if not MIN_SECRET_LENGTH <= len(stripped) <= 1024:
        raise ValueError(f"must be {MIN_SECRET_LENGTH} to 1024 characters of random text")
    lowered = stripped.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        raise ValueError("looks like a placeholder, not a random value")
    repeats = any(
        stripped == (stripped[:size] * (len(stripped) // size + 1))[: len(stripped)]
        for size in range(1, len(stripped) // 2 + 1)
    )
    if repeats or len(set(stripped)) < 10:
        raise ValueError("is too repetitive to be random; use a long random value")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONSENT_LEDGER_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "CONSENT_LEDGER_DATABASE_URL"),
        description="Where the ledger lives; default: consent-ledger.db in the working directory.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: LogLevel = "info"
    database_pool_size: int = Field(default=10, ge=1, le=200)
    idempotency_retention_hours: int = Field(default=24, ge=24, le=24 * 365)
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs subject tokens. Required with PostgreSQL; on the embedded SQLite "
        "default it is generated on first start and kept in secret_key_file.",
    )
    secret_key_file: Path | None = Field(
        default=None,
        description="Where the embedded default keeps its generated secret; default: beside the "
        "SQLite file, with the suffix .secret.",
    )
    subject_token_ttl_seconds: int = Field(default=900, ge=60, le=24 * 3600)
    child_ages: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_CHILD_AGES),
        description="Jurisdiction -> the age under which a subject is a child (JSON object); "
        "entries override the defaults, the others stay.",
    )
    child_age_default: int = Field(
        default=16, ge=0, le=21, description="For jurisdictions not in child_ages."
    )
    prompt_cooldown_hours: int = Field(
        default=48, ge=0, le=24 * 365, description="No permission prompt this soon after a refusal."
    )
    checkpoint_interval_seconds: int = Field(
        default=3600,
        ge=0,
        le=7 * 24 * 3600,
        description="How often a signed checkpoint of the ledger is written; 0: only on demand.",
    )
    request_deadlines: dict[str, dict[str, str]] = Field(
        default_factory=lambda: dict(DEFAULT_REQUEST_DEADLINES),
        description='Jurisdiction -> {"due": "30d" or "1m", "max_extension": "0d" or "2m"} for '
        'data-subject requests; entries override the defaults; "default" for the rest.',
    )
    webhook_worker: Literal["in-process", "off"] = Field(
        default="in-process",
        description="Deliver webhooks from each server worker (in-process), or leave it to "
        "`consent-ledger worker` processes (off). Either way no message is delivered by two "
        "workers at once.",
    )
    webhook_timeout_seconds: float = Field(
        default=10, gt=0, le=60, description="How long a receiver has to answer one delivery."
    )
    webhook_retry_seconds: float = Field(
        default=5, gt=0, le=3600, description="The first retry's delay; each next one doubles."
    )
    webhook_retry_max_delay_seconds: float = Field(
        default=6 * 3600, gt=0, le=24 * 3600, description="No retry waits longer than this."
    )
    webhook_give_up_seconds: float = Field(
        default=3 * 24 * 3600,
        gt=0,
        le=30 * 24 * 3600,
        description="A message still undelivered this long after it was written (or replayed) "
        "is marked failed.",
    )
    webhook_poll_seconds: float = Field(
        default=1, gt=0, le=60, description="How often a delivery worker looks for due messages."
    )
    webhook_allow_http: bool = Field(
        default=False,
        description="Accept plain-http webhook URLs to hosts other than loopback (not advised: "
        "the body names subjects).",
    )
    public_docs: bool = Field(
        default=True,
        description="Serve /docs, /redoc and /openapi.json without a credential. When false, the "
        "browsable docs are off and /openapi.json needs a credential.",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("child_ages")
    @classmethod
    def _child_ages(cls, value: dict[str, int]) -> dict[str, int]:
        for jurisdiction, age in value.items():
            if not (len(jurisdiction) == 2 and jurisdiction.isascii() and jurisdiction.isupper()):
                raise ValueError(f"{jurisdiction!r} is not a two-letter jurisdiction code")
            if not 0 <= age <= 21:
                raise ValueError(f"{jurisdiction}: {age} is not an age between 0 and 21")
        return DEFAULT_CHILD_AGES | value  # overrides; the other defaults stay

    @field_validator("request_deadlines")
    @classmethod
    def _request_deadlines(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for jurisdiction, rule in value.items():
            if jurisdiction != "default" and not re.fullmatch(r"[A-Z]{2}", jurisdiction):
                raise ValueError(f"{jurisdiction!r} is not a two-letter jurisdiction code")
            if set(rule) != {"due", "max_extension"} or not all(
                re.fullmatch(r"[0-9]{1,3}[dm]", period) for period in rule.values()
            ):
                raise ValueError(
                    f'{jurisdiction}: give {{"due": "30d", "max_extension": "0d"}} '
                    "(periods in days d or calendar months m)"
                )
        return DEFAULT_REQUEST_DEADLINES | value

    def child_age(self, jurisdiction: str) -> int:
        return self.child_ages.get(jurisdiction, self.child_age_default)

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret_strength(value.get_secret_value())
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()


async def get_app_settings(request: Request) -> Settings:
    """The settings the running application was created with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
