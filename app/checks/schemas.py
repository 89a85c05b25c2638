import uuid

from pydantic import BaseModel, ConfigDict, Field

from app.checks.decision import Reason
from app.core.schemas import CatalogueKey, SubjectId


class CheckItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: CatalogueKey
    purpose: CatalogueKey


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_id: SubjectId
    items: list[CheckItem] = Field(min_length=1, max_length=100)


class DecisionPublic(BaseModel):
    target: str
    purpose: str
    allowed: bool
    reason: Reason
    state: str
    event_id: uuid.UUID | None = Field(
        description="The ledger event that justifies the decision; store it with what you collect."
    )
    policy_version: str | None


class CheckResponse(BaseModel):
    subject_id: str
    decisions: list[DecisionPublic]
