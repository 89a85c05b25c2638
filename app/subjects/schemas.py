from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.schemas import Instant


class SubjectPut(BaseModel):
    """``PUT /v1/subjects/{subject_id}``: the subject's attributes (omitted ones are cleared)."""

    model_config = ConfigDict(extra="forbid")

    jurisdiction: str = Field(
        default="CN",
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166-1 alpha-2 country code, or EU; decides the age of a child.",
    )
    birth_year: int | None = Field(default=None, ge=1900)

    @field_validator("birth_year")
    @classmethod
    def _not_in_future(cls, value: int | None) -> int | None:
        if value is not None and value > datetime.now(UTC).year:
            raise ValueError("birth_year cannot be in the future")
        return value


class SubjectPublic(BaseModel):
    id: str
    jurisdiction: str
    birth_year: int | None
    status: Literal["active", "cancelled"]
    created_at: Instant
    updated_at: Instant
