"""Signed checkpoints of the ledger: every subject's chain head at one instant. Only added."""

import uuid
from datetime import datetime

from sqlalchemy import Column, ForeignKey, String, Uuid
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, uuid7
from app.models import base as _base  # noqa: F401


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoint"

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    event_count: int
    subject_count: int
    merkle_root: str = Field(max_length=64)
    public_key: str = Field(max_length=64)  # raw Ed25519 public key, hex
    signature: str = Field(max_length=128)  # Ed25519 signature of the signed message, hex
    # The checkpoint before this one, also signed: checkpoints form a chain of their own.
    previous_id: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid(), nullable=True))
    previous_root: str | None = Field(default=None, max_length=64)


class CheckpointHead(SQLModel, table=True):
    """One subject's chain head as a checkpoint saw it."""

    __tablename__ = "checkpoint_head"

    checkpoint_id: uuid.UUID = Field(
        sa_column=Column(Uuid(), ForeignKey("checkpoint.id"), primary_key=True)
    )
    subject_id: str = Field(sa_column=Column(String(255), primary_key=True))
    seq: int
    head_hash: str = Field(max_length=64)
