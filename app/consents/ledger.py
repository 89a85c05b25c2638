"""The hash chain of a subject's ledger.

Each event's ``hash`` is the SHA-256 (hex) of the canonical encoding of its other fields, which
include ``prev_hash``, the hash of the subject's previous event (64 zeros for the first). The
canonical encoding is JSON with keys sorted, no insignificant white space, UTF-8 without escaping
non-ASCII, integers as integers, instants as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` and absent values as
``null``: exactly what ``json.dumps(fields, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` prints. The README shows an auditor how to recompute it.
"""

import hashlib
import json
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from app.core.types import isoformat_z
from app.models import GENESIS_HASH, ConsentEvent

HASHED_FIELDS = (
    "id",
    "subject_id",
    "seq",
    "target",
    "purpose",
    "state",
    "previous_state",
    "actor",
    "actor_id",
    "source",
    "policy_version",
    "recorded_at",
    "expires_at",
    "evidence",
    "app_version",
    "locale",
    "reason",
    "prev_hash",
)


@dataclass(slots=True)
class NewEvent:
    """An event about to be appended: a ConsentEvent row's columns, without the ORM's cost (the
    consent writer stores it on the driver; ``record_events`` turns it into the row)."""

    id: uuid.UUID
    subject_id: str
    seq: int
    target_key: str
    purpose_key: str
    state: str
    previous_state: str
    actor: str
    actor_id: str | None
    source: str
    policy_version: str
    recorded_at: datetime
    expires_at: datetime | None
    evidence: dict[str, Any]
    app_version: str | None
    locale: str | None
    reason: str | None
    prev_hash: str
    hash: str

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COLUMNS}

    def model(self) -> ConsentEvent:
        return ConsentEvent(**self.row())


_COLUMNS = tuple(f.name for f in fields(NewEvent))


def hashed_fields(event: ConsentEvent | NewEvent) -> dict[str, Any]:
    """The fields the hash covers, in their canonical JSON types."""
    return {
        "id": str(event.id),
        "subject_id": event.subject_id,
        "seq": event.seq,
        "target": event.target_key,
        "purpose": event.purpose_key,
        "state": event.state,
        "previous_state": event.previous_state,
        "actor": event.actor,
        "actor_id": event.actor_id,
        "source": event.source,
        "policy_version": event.policy_version,
        "recorded_at": isoformat_z(event.recorded_at),
        "expires_at": isoformat_z(event.expires_at) if event.expires_at else None,
        "evidence": dict(event.evidence),
        "app_version": event.app_version,
        "locale": event.locale,
        "reason": event.reason,
        "prev_hash": event.prev_hash,
    }


def canonical_bytes(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_hash(fields: dict[str, Any]) -> str:
    """The hash of an event given as its fields in canonical JSON types (extra keys ignored)."""
    return hashlib.sha256(canonical_bytes({k: fields[k] for k in HASHED_FIELDS})).hexdigest()


def event_hash(event: ConsentEvent | NewEvent) -> str:
    return canonical_hash(hashed_fields(event))


@dataclass(frozen=True)
class BrokenLink:
    subject_id: str
    seq: int
    problem: str  # gap | broken_link | edited (and, in verification, head_mismatch | truncated)
    expected: str | None
    found: str | None
    detail: str


class ChainWalker:
    """Walks one subject's events in ``seq`` order and remembers the first link that does not
    hold: a gap in the numbering, a ``prev_hash`` that is not the previous event's hash, or a
    stored hash that is not the hash of the event's fields."""

    def __init__(self, subject_id: str) -> None:
        self.subject_id = subject_id
        self.seq = 0
        self.hash = GENESIS_HASH
        self.broken: BrokenLink | None = None

    def step(self, event: dict[str, Any]) -> None:
        """``event``: its canonical fields plus ``hash``."""
        self.seq += 1
        if self.broken is None:
            self.broken = self._check(event)
        self.hash = event["hash"]

    def _check(self, event: dict[str, Any]) -> BrokenLink | None:
        seq, stored = event["seq"], event["hash"]
        if seq != self.seq:
            return BrokenLink(
                self.subject_id, self.seq, "gap", str(self.seq), str(seq),
                f"expected event {self.seq} next, found {seq}: events are missing or out of order",
            )  # fmt: skip
        if event["prev_hash"] != self.hash:
            return BrokenLink(
                self.subject_id, seq, "broken_link", self.hash, event["prev_hash"],
                "prev_hash is not the hash of the event before: an event was deleted, inserted "
                "or moved",
            )  # fmt: skip
        recomputed = canonical_hash(event)
        if recomputed != stored:
            return BrokenLink(
                self.subject_id, seq, "edited", recomputed, stored,
                "the stored hash is not the hash of the event's fields: a field was edited",
            )  # fmt: skip
        return None
