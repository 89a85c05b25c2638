import hashlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.core.schemas import CatalogueKey, InputInstant, Instant

# Printable text that may run over several lines.
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]*$"

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VersionId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=VERSION_PATTERN)]


class PolicyCreate(BaseModel):
    """``POST /v1/policies``: publish a version. Give the text, or its SHA-256 and a URL."""

    model_config = ConfigDict(extra="forbid")

    version: VersionId
    effective_at: InputInstant | None = Field(
        default=None, description="When it takes effect; default now. Never in the past."
    )
    text: Annotated[
        str | None, StringConstraints(min_length=1, max_length=2_000_000, pattern=TEXT)
    ] = None
    text_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    url: str | None = Field(
        default=None, max_length=2000, pattern=r"^https?://[^\s\x00-\x1f\x7f]+$"
    )
    summary: Annotated[str, StringConstraints(min_length=1, max_length=10_000, pattern=TEXT)]
    material: bool = Field(
        default=False,
        description="A material change: consents given under older versions for the affected "
        "purposes stop allowing processing until the user consents again.",
    )
    affected_purposes: list[CatalogueKey] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _consistent(self) -> "PolicyCreate":
        if self.text is None and (self.text_sha256 is None or self.url is None):
            raise ValueError("give the text, or its text_sha256 and the url where it is published")
        if self.text is not None:
            digest = hashlib.sha256(self.text.encode()).hexdigest()
            if self.text_sha256 not in (None, digest):
                raise ValueError("text_sha256 is not the SHA-256 of text (UTF-8)")
            self.text_sha256 = digest
        if self.material and not self.affected_purposes:
            raise ValueError("a material change must name the purposes it affects")
        if not self.material and self.affected_purposes:
            raise ValueError("affected_purposes only go with a material change")
        if len(set(self.affected_purposes)) != len(self.affected_purposes):
            raise ValueError("affected_purposes has duplicates")
        return self


class PolicyPublic(BaseModel):
    version: str
    effective_at: Instant
    published_at: Instant
    text_sha256: str
    url: str | None
    summary: str
    material: bool
    affected_purposes: list[str]
    affected_targets: list[str] = Field(description="The targets the affected purposes may use.")
    current: bool = Field(description="The version in effect now.")


class PolicyDetail(PolicyPublic):
    text: str | None


class PolicyList(BaseModel):
    items: list[PolicyPublic]
    next_cursor: None = None
