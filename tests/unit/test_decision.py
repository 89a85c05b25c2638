"""The decision rules, in order, as a pure function."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.catalogue.loader import load_catalogue
from app.checks.decision import ConsentState, decide

CATALOGUE = load_catalogue()
OPTIONAL = CATALOGUE.pairs[("gender", "service_improvement")]
NECESSARY = CATALOGUE.pairs[("email", "account_registration")]
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def consent(state: str, expires_at: datetime | None = None) -> ConsentState:
    return ConsentState(state, uuid.uuid4(), "2022-02", NOW - timedelta(days=1), expires_at)


@pytest.mark.parametrize(
    ("pair", "stored", "cancelled", "allowed", "reason", "state"),
    [
        (OPTIONAL, None, False, False, "not_asked", "not_asked"),
        (OPTIONAL, consent("given"), False, True, "consent_given", "given"),
        (OPTIONAL, consent("refused"), False, False, "refused", "refused"),
        (OPTIONAL, consent("withdrawn"), False, False, "withdrawn", "withdrawn"),
        (OPTIONAL, consent("revoked"), False, False, "revoked", "revoked"),
        (OPTIONAL, consent("given", NOW), False, False, "expired", "expired"),
        (OPTIONAL, consent("given", NOW + timedelta(seconds=1)), False, True, "consent_given", "given"),
        (OPTIONAL, consent("given"), True, False, "account_cancelled", "given"),
        (OPTIONAL, consent("something-new"), False, False, "not_asked", "something-new"),
        (NECESSARY, None, False, True, "necessary", "not_asked"),
        (NECESSARY, None, True, False, "account_cancelled", "not_asked"),
    ],
)  # fmt: skip
def test_rules_in_order(
    pair: object,
    stored: ConsentState | None,
    cancelled: bool,
    allowed: bool,
    reason: str,
    state: str,
) -> None:
    decision = decide(pair, stored, cancelled=cancelled, at=NOW)  # type: ignore[arg-type]
    assert (decision.allowed, decision.reason, decision.state) == (allowed, reason, state)
    if stored is not None and pair is not NECESSARY:
        assert decision.event_id == stored.event_id
