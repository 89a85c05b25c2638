from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.core.schemas import Instant
from app.core.security import Role

KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=KEY_NAME_PATTERN)]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName = Field(description="Unique forever (also after revocation); names the actor.")
    role: Role


class ApiKeyPublic(BaseModel):
    name: str
    role: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: Instant
    last_used_at: Instant | None = Field(description="To the minute.")
    revoked_at: Instant | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself. Shown only this once; only its hash is kept.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyPublic]
    next_cursor: None = None


class SubjectToken(BaseModel):
    token: str
    token_type: str = "Bearer"  # noqa: S105 (the scheme, not a secret)
    subject_id: str
    expires_at: Instant
