"""The decision: may the app process this target for this purpose, for this subject, at ``at``?

A pure function over what the database holds, so every path (the check, the consent listing,
answers ``as_of`` a past instant) decides the same way. Default deny: ``allowed`` is true only
when every rule holds, and ``reason`` names the first rule that failed.

Rules, in order (DESIGN.md, "The decision"):
  1. the pair exists in the catalogue            (checked by the caller: a 422, not a decision)
  2. the account is not cancelled                -> ``account_cancelled``
  3. contract basis and necessary                -> allowed, ``necessary``
  4. a consent was recorded                      -> ``not_asked``
     and it is ``given``                         -> ``refused`` / ``withdrawn`` / ``revoked``
     and it has not lapsed                       -> ``expired``
  5. otherwise                                   -> allowed, ``consent_given``
Policy re-consent, guardians and OS permission state slot in between 4 and 5.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.catalogue.loader import Pair

Reason = Literal[
    "necessary",
    "consent_given",
    "account_cancelled",
    "not_asked",
    "refused",
    "withdrawn",
    "revoked",
    "expired",
]


_DENIED_BY_STATE: dict[str, Reason] = {
    "refused": "refused",
    "withdrawn": "withdrawn",
    "revoked": "revoked",
}


@dataclass(frozen=True, slots=True)
class ConsentState:
    """The part of a consent (current, or as of an instant) that the decision reads."""

    state: str
    event_id: uuid.UUID
    policy_version: str
    recorded_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Decision:
    target: str
    purpose: str
    allowed: bool
    reason: Reason
    state: str
    event_id: uuid.UUID | None
    policy_version: str | None


def decide(pair: Pair, consent: ConsentState | None, *, cancelled: bool, at: datetime) -> Decision:
    target, purpose = pair.target.key, pair.purpose.key

    def deny(reason: Reason, state: str) -> Decision:
        return Decision(
            target,
            purpose,
            False,
            reason,
            state,
            consent.event_id if consent else None,
            consent.policy_version if consent else None,
        )

    state = consent.state if consent else "not_asked"
    if consent and state == "given" and consent.expires_at is not None and consent.expires_at <= at:
        state = "expired"
    if cancelled:
        return deny("account_cancelled", state)
    if pair.necessary:
        return Decision(target, purpose, True, "necessary", state, None, None)
    if consent is None:
        return deny("not_asked", state)
    if consent.state != "given":
        return deny(_DENIED_BY_STATE.get(consent.state, "not_asked"), state)
    if state == "expired":
        return deny("expired", state)
    return Decision(
        target, purpose, True, "consent_given", state, consent.event_id, consent.policy_version
    )
