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
from collections.abc import Iterable
from dataclasses import dataclass
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


def hashed_fields(event: ConsentEvent) -> dict[str, Any]:
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


def event_hash(event: ConsentEvent) -> str:
    return hashlib.sha256(canonical_bytes(hashed_fields(event))).hexdigest()


@dataclass(frozen=True)
class BrokenLink:
    subject_id: str
    seq: int
    problem: str
    expected: str
    found: str


def verify_chain(subject_id: str, events: Iterable[ConsentEvent]) -> BrokenLink | None:
    """Walk one subject's events in ``seq`` order; return the first link that does not hold."""
    expected_seq, prev_hash = 1, GENESIS_HASH
    for event in events:
        if event.seq != expected_seq:
            return BrokenLink(
                subject_id,
                expected_seq,
                "sequence gap or reorder",
                str(expected_seq),
                str(event.seq),
            )
        if event.prev_hash != prev_hash:
            return BrokenLink(
                subject_id,
                event.seq,
                "prev_hash does not match the previous event",
                prev_hash,
                event.prev_hash,
            )
        recomputed = event_hash(event)
        if recomputed != event.hash:
            return BrokenLink(
                subject_id,
                event.seq,
                "hash does not match the event's content",
                recomputed,
                event.hash,
            )
        expected_seq, prev_hash = expected_seq + 1, event.hash
    return None
