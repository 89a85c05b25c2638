"""The decision rules, in order, as a pure function."""

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.catalogue.loader import load_catalogue
from app.checks.decision import (
    ConsentState,
    OsState,
    Policies,
    SubjectFacts,
    decide,
    unasked,
    unasked_applies,
)
from app.checks.router import Answers, answer
from app.checks.service import decide_all
from app.core.config import Settings

CATALOGUE = load_catalogue()
OPTIONAL = CATALOGUE.pairs[("gender", "service_improvement")]
NECESSARY = CATALOGUE.pairs[("email", "account_registration")]
NOW = datetime(2026, 6, 1, tzinfo=UTC)
POLICIES = Policies(effective_at={"2022-02": datetime(2022, 2, 1, tzinfo=UTC)})


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
    decision = decide(
        pair,  # type: ignore[arg-type]
        stored,
        subject=SubjectFacts(cancelled=cancelled),
        policies=POLICIES,
        at=NOW,
    )
    assert (decision.allowed, decision.reason, decision.state) == (allowed, reason, state)
    if stored is not None and pair is not NECESSARY:
        assert decision.event_id == stored.event_id


T0 = datetime(2022, 2, 1, tzinfo=UTC)
MATERIAL = Policies(
    effective_at={"2022-02": T0, "2026-03": NOW - timedelta(days=10)},
    material=((NOW - timedelta(days=10), "2026-03", frozenset({"service_improvement"})),),
)
CAMERA = CATALOGUE.pairs[("permission.camera", "app_features")]


@pytest.mark.parametrize(
    ("version", "purpose", "at", "superseded"),
    [
        ("2022-02", "service_improvement", NOW, "2026-03"),
        ("2022-02", "new_product_development", NOW, None),
        ("2022-02", "service_improvement", NOW - timedelta(days=11), None),
        ("2026-03", "service_improvement", NOW, None),
        ("unknown", "service_improvement", NOW, None),
    ],
)
def test_a_material_version_supersedes_older_ones_for_its_purposes_from_when_it_takes_effect(
    version: str, purpose: str, at: datetime, superseded: str | None
) -> None:
    assert MATERIAL.superseded_by(version, purpose, at) == superseded


def test_a_child_without_a_guardian_is_never_prompted_but_a_refusal_stays_a_refusal() -> None:
    child = SubjectFacts(child=True)
    assert decide(OPTIONAL, None, subject=child, policies=POLICIES, at=NOW).reason == (
        "guardian_consent_required"
    )
    refused = decide(OPTIONAL, consent("refused"), subject=child, policies=POLICIES, at=NOW)
    assert refused.reason == "refused"
    with_guardian = SubjectFacts(child=True, guardian_since=NOW - timedelta(days=2))
    given = decide(OPTIONAL, consent("given"), subject=with_guardian, policies=POLICIES, at=NOW)
    assert given.allowed


@pytest.mark.parametrize(
    ("os", "device", "reason", "may_prompt", "settings_required"),
    [
        (None, False, "consent_given", False, False),
        (None, True, "os_denied", True, False),
        (OsState("granted_limited", None), True, "consent_given", False, False),
        (OsState("provisional", None), True, "consent_given", False, False),
        (OsState("denied", NOW - timedelta(hours=47)), True, "os_denied", False, False),
        (OsState("denied", NOW - timedelta(hours=48)), True, "os_denied", True, False),
        (OsState("denied_permanent", NOW - timedelta(days=9)), True, "os_denied", False, True),
        (OsState("restricted", None), True, "os_denied", False, True),
        (OsState("not_determined", None), True, "os_denied", True, False),
    ],
)
def test_os_state_and_prompt_advice(
    os: OsState | None, device: bool, reason: str, may_prompt: bool, settings_required: bool
) -> None:
    decision = decide(
        CAMERA, consent("given"), subject=SubjectFacts(), policies=POLICIES, at=NOW, os=os,
        device=device,
    )  # fmt: skip
    assert (decision.reason, decision.may_prompt, decision.settings_required) == (
        reason,
        may_prompt,
        settings_required,
    )


def test_an_unguarded_child_is_never_prompted_and_a_guardian_reopens_the_question() -> None:
    refused = ConsentState("refused", uuid.uuid4(), "2022-02", NOW - timedelta(days=3), None)
    child = decide(CAMERA, refused, subject=SubjectFacts(child=True), policies=POLICIES, at=NOW)
    assert (child.reason, child.may_prompt) == ("refused", False)
    revoked = ConsentState("revoked", uuid.uuid4(), "2022-02", NOW - timedelta(days=3), None)
    guarded = SubjectFacts(child=True, guardian_since=NOW - timedelta(days=1))
    after = decide(CAMERA, revoked, subject=guarded, policies=POLICIES, at=NOW)
    assert (after.reason, after.may_prompt) == ("revoked", True)


def test_child_ages_override_the_defaults_one_by_one() -> None:
    settings = Settings(child_ages={"DE": 14})
    assert (settings.child_age("DE"), settings.child_age("CN"), settings.child_age("FR")) == (
        14,
        14,
        15,
    )


SUBJECTS = [
    SubjectFacts(),
    SubjectFacts(cancelled=True),
    SubjectFacts(child=True),
    SubjectFacts(child=True, guardian_since=NOW - timedelta(days=2)),
    SubjectFacts(guardian_since=NOW - timedelta(days=2)),
]
DEVICES = [  # (a device named, the OS state of the pair's target on it)
    (False, None),
    (False, OsState("denied_permanent", None)),  # given with no device: it is still read
    (True, None),
    (True, OsState("denied", NOW - timedelta(hours=1))),
    (True, OsState("granted", None)),
]


def test_decide_is_the_unasked_decision_wherever_it_applies() -> None:
    """Every pair of the catalogue, every kind of subject, with a device or none, an OS state
    or none, at two instants, under three archives of policy versions and two cool-downs:
    wherever ``unasked_applies``, ``decide`` answers exactly ``unasked(pair)``."""
    applied = 0
    for pair in CATALOGUE.pairs.values():
        expected = unasked(pair)
        for subject, (device, os), at, policies, cooldown in itertools.product(
            SUBJECTS, DEVICES, (T0, NOW), (Policies(), POLICIES, MATERIAL), (0, 48)
        ):
            if unasked_applies(pair, None, subject, os, device):
                applied += 1
                assert expected == decide(
                    pair, None, subject=subject, policies=policies, at=at, os=os, device=device,
                    prompt_cooldown=timedelta(hours=cooldown),
                )  # fmt: skip
    # each pair at least for the two subjects it applies to with no device, at both instants,
    # under the three archives, with both cool-downs
    assert applied >= len(CATALOGUE.pairs) * 2 * 2 * 3 * 2


def test_the_checks_body_is_its_decisions_answer_byte_for_byte() -> None:
    """``Answers.body`` (the routes') against ``answer`` of ``decide_all``'s decisions, for every
    pair of the catalogue in one check: with consents in every state and none, for every kind of
    subject, with a device and OS states or none."""
    settings = Settings()
    pairs = list(CATALOGUE.pairs.values())
    states = ["given", "refused", "withdrawn", "revoked", "given"]
    consents = {pairs[i * 7].key: consent(state) for i, state in enumerate(states)}
    consents[CAMERA.key] = consent("refused")
    consents[("permission.location", "app_features")] = consent("given")
    os = {
        "permission.camera": OsState("denied", NOW - timedelta(hours=1)),
        "permission.location": OsState("granted", None),
    }
    answers = Answers(CATALOGUE, settings)
    subject_id = 'user "1" \\ ü'  # escaped (a quote, a backslash) and non-ASCII, as answer does
    devices = [(None, {}), (None, os), ("phone-1", {}), ("phone-1", os)]
    for subject, (device_id, observed) in itertools.product(SUBJECTS, devices):
        decisions = decide_all(
            settings, pairs, consents, observed, subject, MATERIAL, NOW, device_id
        )
        body = answers.body(
            subject_id, pairs, consents, observed, subject, MATERIAL, NOW, device_id
        )
        assert body == answer(subject_id, decisions)
