import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.consents.schemas import ConsentPublic, EventPublic
from app.core.schemas import NO_CONTROL_CHARACTERS, InputInstant, Instant
from app.permissions.schemas import PermissionObservationPublic
from app.requests.schemas import RequestEventPublic, RequestPublic


class SubjectPut(BaseModel):
    """``PUT /v1/subjects/{subject_id}``: the subject's attributes (omitted ones are cleared)."""

    model_config = ConfigDict(extra="forbid")

    jurisdiction: str = Field(
        default="CN",
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166-1 alpha-2 country code, or EU; decides the age of a child.",
    )
    birth_year: int | None = Field(default=None, ge=1900)
    birth_date: date | None = Field(default=None, ge=date(1900, 1, 1))
    age: int | None = Field(
        default=None, ge=0, le=150, description="Age in years as stated today; it grows with time."
    )

    @field_validator("birth_year")
    @classmethod
    def _year_not_in_future(cls, value: int | None) -> int | None:
        if value is not None and value > datetime.now(UTC).year:
            raise ValueError("birth_year cannot be in the future")
        return value

    @field_validator("birth_date")
    @classmethod
    def _date_not_in_future(cls, value: date | None) -> date | None:
        if value is not None and value > datetime.now(UTC).date():
            raise ValueError("birth_date cannot be in the future")
        return value

    @model_validator(mode="after")
    def _one_age(self) -> "SubjectPut":
        given = [f for f in ("birth_year", "birth_date", "age") if getattr(self, f) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give at most one of birth_year, birth_date, age (got {', '.join(given)})"
            )
        return self


class SubjectPublic(BaseModel):
    id: str
    jurisdiction: str
    birth_year: int | None
    birth_date: date | None
    age: int | None
    age_stated_at: Instant | None
    child: bool = Field(description="Under the child age of the jurisdiction, now.")
    guardian_verified_at: Instant | None
    status: Literal["active", "cancelled"]
    cancelled_at: Instant | None
    erased_at: Instant | None = Field(
        description="When the attributes and OS observations were last erased."
    )
    created_at: Instant
    updated_at: Instant


GuardianText = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROL_CHARACTERS)
]


class GuardianConsentCreate(BaseModel):
    """``POST /v1/subjects/{subject_id}/guardian-consents``: a guardian's verified consent."""

    model_config = ConfigDict(extra="forbid")

    guardian_ref: GuardianText = Field(description="Your reference for the guardian (not a name).")
    relationship: Literal["parent", "legal_guardian", "other_guardian"]
    verification_method: Literal[
        "id_document", "payment_card", "signed_form", "video_call", "knowledge_based", "other"
    ]
    evidence_ref: Annotated[
        str, StringConstraints(min_length=1, max_length=1024, pattern=NO_CONTROL_CHARACTERS)
    ] = Field(description="Where the verification evidence is kept.")
    verifier: GuardianText = Field(description="Who verified: a person or a service.")
    verified_at: InputInstant | None = Field(default=None, description="Default: now.")


class GuardianConsentPublic(BaseModel):
    id: uuid.UUID
    subject_id: str
    guardian_ref: str
    relationship: str
    verification_method: str
    evidence_ref: str
    verifier: str
    verified_at: Instant
    recorded_at: Instant
    recorded_by: str


class GuardianConsentList(BaseModel):
    items: list[GuardianConsentPublic]
    next_cursor: None = None


class CancellationCreate(BaseModel):
    """``POST /v1/subjects/{subject_id}/cancellation``."""

    model_config = ConfigDict(extra="forbid")

    reason: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=1000, pattern=NO_CONTROL_CHARACTERS)
        ]
        | None
    ) = Field(default=None, description="Kept with each withdrawal in the ledger.")


class ErasurePublic(BaseModel):
    subject: SubjectPublic
    consents_withdrawn: int
    observations_erased: int
    recipients_notified: int = Field(
        description="Recipients told to delete (besides the withdrawal notices of what they "
        "rely on)."
    )


class ExportedRequest(RequestPublic):
    events: list[RequestEventPublic]


class SubjectExport(BaseModel):
    """Everything held about one subject."""

    subject_id: str
    exported_at: Instant
    subject: SubjectPublic
    consents: list[ConsentPublic] = Field(description="Every pair, with state and decision now.")
    events: list[EventPublic] = Field(description="The whole ledger, oldest first.")
    permissions: list[PermissionObservationPublic]
    guardian_consents: list[GuardianConsentPublic]
    requests: list[ExportedRequest]
