import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.core.schemas import Instant

RequestType = Literal[
    "access",
    "correction",
    "deletion",
    "consent_change",
    "account_cancellation",
    "automated_decision_explanation",
]
Status = Literal[
    "received", "identity_verified", "in_progress", "completed", "refused", "cancelled"
]
# "We will not be able to respond to your request in the following circumstances" (policy, 1-8).
RefusalGround = Literal[
    "legal_obligation",
    "national_security",
    "public_safety_or_health",
    "criminal_investigation",
    "abuse_of_rights",
    "life_and_property",
    "harm_to_others",
    "trade_secrets",
]
# "You may request us to delete personal information in the following circumstances" (1-5).
DeletionCircumstance = Literal[
    "unlawful_processing",
    "no_consent",
    "breach_of_agreement",
    "no_longer_used_or_cancelled",
    "service_ended",
]
Text = Annotated[
    str, StringConstraints(min_length=1, max_length=10_000, pattern=r"^[^\x00\ufffd]*$")
]
Short = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f\ufffd]*$")
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestCreate(_Input):
    type: RequestType
    details: Text | None = Field(default=None, description="What the subject asked, in words.")
    deletion_circumstance: DeletionCircumstance | None = Field(
        default=None, description="Deletion requests only, and required for them."
    )

    @model_validator(mode="after")
    def _circumstance(self) -> "RequestCreate":
        if (self.type == "deletion") != (self.deletion_circumstance is not None):
            raise ValueError(
                "a deletion request must name the circumstance that applies "
                "(deletion_circumstance), and only a deletion request may"
            )
        return self


class IdentityVerification(_Input):
    method: Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z_]+$")] = (
        Field(
            description="How identity was proved, e.g. written_request, id_document, account_login."
        )
    )
    verified_by: Short


class Completion(_Input):
    resolution: Text = Field(description="What was done.")
    fee: Literal["waived", "charged"] | None = Field(
        default=None, description="Required for a request flagged `repeated`: the fee decision."
    )


class Refusal(_Input):
    ground: RefusalGround
    reason: Text = Field(description="Why, in writing, for the subject.")


class Extension(_Input):
    period: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,2}[dm]$")] = Field(
        description="How much longer: days (`14d`) or calendar months (`2m`)."
    )
    reason: Text


class CancellationInput(_Input):
    reason: Text | None = None


class RequestPublic(BaseModel):
    id: uuid.UUID
    subject_id: str
    type: str
    status: str
    received_at: Instant
    due_at: Instant
    overdue: bool
    jurisdiction: str
    details: str | None
    deletion_circumstance: str | None
    repeated: bool
    fee: str | None
    identity_method: str | None
    identity_verified_by: str | None
    identity_verified_at: Instant | None
    extension_reason: str | None
    resolution: str | None
    refusal_ground: str | None
    refusal_reason: str | None
    closed_at: Instant | None
    export_attached: bool = Field(
        default=False, description="A completed access request: GET /v1/requests/{id}/export."
    )


class RequestList(BaseModel):
    items: list[RequestPublic]
    next_cursor: str | None = None


class RequestEventPublic(BaseModel):
    id: uuid.UUID
    at: Instant
    actor: str
    actor_id: str
    action: str
    from_status: str | None
    to_status: str
    details: dict[str, Any]


class RequestEventList(BaseModel):
    items: list[RequestEventPublic]
    next_cursor: None = None
