"""Bodies of the recipient and delivery routes."""

import uuid
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints

from app.core.schemas import NO_CONTROL_CHARACTERS, CatalogueKey, Instant

Kind = Literal["processor", "third_party"]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROL_CHARACTERS)
]
Keys = Annotated[list[CatalogueKey], Field(min_length=1, max_length=100)]
Url = Annotated[AnyHttpUrl, Field(description="Where messages are POSTed (https).")]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipientCreate(_Input):
    name: Name = Field(description="Unique: the processor or third party, as the policy names it.")
    kind: Kind = Field(description="An entrusted processor, or a third party we provide data to.")
    url: Url
    purposes: Keys | None = Field(
        default=None, description="The purposes it relies on; omitted: every purpose."
    )
    targets: Keys | None = Field(
        default=None, description="The targets (data categories) it receives; omitted: every one."
    )


class RecipientUpdate(_Input):
    """Fields left out stay as they are; ``null`` for purposes or targets means every one."""

    kind: Kind | None = None
    url: Url | None = None
    purposes: Keys | None = None
    targets: Keys | None = None


class RecipientPublic(BaseModel):
    id: uuid.UUID
    name: str
    kind: str
    url: str
    purposes: list[str] | None
    targets: list[str] | None
    created_at: Instant
    created_by: str
    updated_at: Instant
    disabled_at: Instant | None


class RecipientCreated(RecipientPublic):
    secret: str = Field(
        description="The signing secret (whsec_…), shown this once: give it to the receiver."
    )


class RecipientList(BaseModel):
    items: list[RecipientPublic]
    next_cursor: str | None = None


class DeliveryPublic(BaseModel):
    id: uuid.UUID = Field(description="The webhook-id header of every attempt.")
    recipient_id: uuid.UUID
    subject_id: str
    type: str
    payload: dict[str, Any]
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: Instant
    next_attempt_at: Instant | None = Field(description="While pending.")
    delivered_at: Instant | None
    last_error: str | None


class DeliveryList(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None = None


class AttemptPublic(BaseModel):
    id: uuid.UUID
    message_id: uuid.UUID
    attempted_at: Instant
    duration_ms: int
    status_code: int | None
    outcome: Literal["delivered", "retrying", "failed"]
    error: str | None


class AttemptList(BaseModel):
    items: list[AttemptPublic]
    next_cursor: str | None = None
