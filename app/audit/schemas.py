import uuid
from typing import Literal

from pydantic import BaseModel, Field

from app.core.schemas import Instant


class LawfulSubject(BaseModel):
    subject_id: str
    event_id: uuid.UUID = Field(description="The consent event that made processing lawful.")
    policy_version: str
    recorded_at: Instant
    expires_at: Instant | None


class StatsBucket(BaseModel):
    start: str = Field(description="First day of the bucket (UTC), YYYY-MM-DD.")
    given: int = 0
    renewed: int = 0
    refused: int = 0
    withdrawn: int = 0
    revoked: int = 0


class Stats(BaseModel):
    bucket: Literal["day", "week", "month"]
    items: list[StatsBucket]


class ProblemPublic(BaseModel):
    subject_id: str
    seq: int
    problem: str = Field(
        description="gap | broken_link | edited | head_mismatch | truncated | "
        "current_state_mismatch; see the README."
    )
    expected: str | None
    found: str | None
    detail: str


class CheckpointCheckPublic(BaseModel):
    id: str
    created_at: str
    event_count: int
    signature_valid: bool = Field(description="Signed by this service's key.")
    root_valid: bool = Field(description="Its stored heads give its signed Merkle root.")
    checkpoints: int = Field(description="Checkpoints in the chain, all checked.")
    chain_problems: list[str] = Field(
        description="Checkpoints not signed by this service, or not following the one before."
    )
    truncated: list[ProblemPublic]


class VerifyReport(BaseModel):
    ok: bool
    checked_at: Instant
    subjects: int
    events: int
    problems: list[ProblemPublic] = Field(description="The first broken link of each subject.")
    more_problems: int = Field(description="Problems beyond the first 1000, not listed.")
    current_state: list[ProblemPublic] = Field(
        description="Current-state rows (what checks decide from) that are not the ledger's "
        "last word on their pair."
    )
    checkpoint: CheckpointCheckPublic | None = Field(
        description="The ledger against the latest signed checkpoint; null if there is none."
    )


class CheckpointPublic(BaseModel):
    id: uuid.UUID
    created_at: Instant
    event_count: int
    subject_count: int
    merkle_root: str
    public_key: str = Field(description="Raw Ed25519 public key, hex.")
    signature: str = Field(description="Ed25519 signature of signed_message, hex.")
    previous_id: uuid.UUID | None = Field(description="The checkpoint before this one.")
    previous_root: str | None
    signed_message: str = Field(description="The exact text that was signed (UTF-8).")


class CheckpointList(BaseModel):
    items: list[CheckpointPublic]
    next_cursor: str | None = None


class PublicKey(BaseModel):
    algorithm: Literal["Ed25519"] = "Ed25519"
    public_key: str = Field(description="Raw 32-byte public key, hex.")
    pem: str = Field(description="SubjectPublicKeyInfo PEM, for openssl.")
