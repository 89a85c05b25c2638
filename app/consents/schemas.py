"""Request and response bodies of the consent routes."""

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.core.schemas import NO_CONTROL_CHARACTERS, CatalogueKey, InputInstant, Instant, ShortText

WritableState = Literal["given", "refused", "withdrawn"]
ConsentState = Literal["not_asked", "given", "refused", "withdrawn", "expired", "revoked"]
Source = Literal["settings_screen", "onboarding", "permission_prompt", "api", "import"]

EvidenceKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
]
EvidenceValue = Annotated[str, StringConstraints(max_length=1024, pattern=NO_CONTROL_CHARACTERS)]
Evidence = Annotated[
    dict[EvidenceKey, EvidenceValue],
    Field(
        max_length=20,
        description="What the user saw and did: e.g. prompt_id, notice_id, screen, ui_text_sha256.",
    ),
]
Locale = Annotated[
    str, StringConstraints(max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChangeContext(_Input):
    """How a change was made; shared by every change of a request."""

    policy_version: ShortText | None = Field(
        default=None, description="The policy version shown to the user; default: the current one."
    )
    source: Source = "api"
    evidence: Evidence = Field(default_factory=dict)
    app_version: ShortText | None = None
    locale: Locale | None = None


class ConsentSet(ChangeContext):
    """``PUT /v1/subjects/{subject_id}/consents/{target}/{purpose}``."""

    state: WritableState
    expires_at: InputInstant | None = Field(
        default=None, description="Only with state `given`: when the consent lapses by itself."
    )


class ConsentChange(_Input):
    target: CatalogueKey
    purpose: CatalogueKey
    state: WritableState
    expires_at: InputInstant | None = None
    evidence: Evidence = Field(
        default_factory=dict, description="Added to the request's evidence for this item."
    )


class ConsentBatch(ChangeContext):
    """``POST /v1/subjects/{subject_id}/consents``: all changes are written, or none."""

    changes: list[ConsentChange] = Field(min_length=1, max_length=200)


class ConsentPublic(BaseModel):
    target: str
    purpose: str
    state: ConsentState
    policy_version: str | None
    event_id: uuid.UUID | None
    recorded_at: Instant | None
    expires_at: Instant | None
    allowed: bool
    reason: str
    renewal_required: bool = Field(
        description="Given under a policy version a material change superseded: ask again."
    )


class ConsentList(BaseModel):
    subject_id: str
    as_of: Instant | None
    items: list[ConsentPublic]
    next_cursor: str | None = None


class EventPublic(BaseModel):
    id: uuid.UUID
    subject_id: str
    seq: int
    target: str
    purpose: str
    state: str
    previous_state: str
    actor: str
    actor_id: str | None
    source: str
    policy_version: str
    recorded_at: Instant
    expires_at: Instant | None
    evidence: dict[str, str]
    app_version: str | None
    locale: str | None
    reason: str | None
    prev_hash: str
    hash: str
