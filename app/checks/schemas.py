import uuid

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from app.checks.decision import Reason
from app.core.schemas import SUBJECT_ID_DESCRIPTION, CatalogueKey, Instant, SubjectId
from app.permissions.schemas import DeviceId


# A dictionary, not a model: a batch holds up to a hundred, and validating each into a model
# instance was a measurable share of a batch check (BENCHMARKS.md, step 17). (No docstring: it
# would become the schema's description in the OpenAPI document.)
@with_config(ConfigDict(extra="forbid"))
class CheckItem(TypedDict):
    target: CatalogueKey
    purpose: CatalogueKey


class CheckQuery(BaseModel):
    """The query of ``GET /v1/checks``."""

    subject_id: SubjectId = Field(description=SUBJECT_ID_DESCRIPTION)
    target: CatalogueKey
    purpose: CatalogueKey
    device_id: DeviceId | None = Field(
        default=None, description="As in POST /v1/checks: permission targets then need an OS state."
    )


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_id: SubjectId
    items: list[CheckItem] = Field(min_length=1, max_length=100)
    device_id: DeviceId | None = Field(
        default=None,
        description="The device asking: permission targets then also need an OS state that "
        "allows use (see PUT …/devices/{device_id}/permissions/{target}).",
    )


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
    may_prompt: bool | None = Field(
        default=None, description="Permissions only: whether the app may show the prompt now."
    )
    next_prompt_after: Instant | None = Field(
        default=None, description="Permissions only: not before this instant (after a refusal)."
    )
    settings_required: bool | None = Field(
        default=None,
        description="Permissions only: the OS will not prompt again; send the user to the "
        "system settings instead.",
    )


class CheckResponse(BaseModel):
    subject_id: str
    decisions: list[DecisionPublic]
