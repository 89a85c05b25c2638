"""The decision: may the app process this target for this purpose, for this subject, at ``at``?

A pure function over what the database holds, so every path (the check, the consent listing,
answers ``as_of`` a past instant) decides the same way. Default deny: ``allowed`` is true only
when every rule holds, and ``reason`` names the first rule that failed.

Rules, in order (DESIGN.md, "The decision"):
  1. the pair exists in the catalogue            (checked by the caller: a 422, not a decision)
  2. the account is not cancelled                -> ``account_cancelled``
  3. contract basis and necessary                -> allowed, ``necessary``
  4. a consent was recorded                      -> ``not_asked`` (for a child with no guardian
                                                    on file: ``guardian_consent_required``, so
                                                    the app never prompts a child)
     and it is ``given``                         -> ``refused`` / ``withdrawn`` / ``revoked``
     and it has not lapsed                       -> ``expired``
     under a policy version no material change
     to its purpose has superseded               -> ``reconsent_required``
     given after a guardian was on file, if the
     subject is a child                          -> ``guardian_consent_required``
  5. for a permission on a named device, the OS
     state allows it                             -> ``os_denied``
  6. otherwise                                   -> allowed, ``consent_given``

Every decision on a permission target also says whether the app may show the prompt now
(``may_prompt``), when it may next (``next_prompt_after``), or that only the system settings can
change it (``settings_required``).
"""

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from app.catalogue.loader import Pair
from app.core.types import Instant

Reason = Literal[
    "necessary",
    "consent_given",
    "account_cancelled",
    "not_asked",
    "refused",
    "withdrawn",
    "revoked",
    "expired",
    "reconsent_required",
    "guardian_consent_required",
    "os_denied",
]

_DENIED_BY_STATE: dict[str, Reason] = {
    "refused": "refused",
    "withdrawn": "withdrawn",
    "revoked": "revoked",
}
# OS states in which the app may use the permission (``provisional``: iOS quiet notifications).
OS_ALLOWS = frozenset({"granted", "granted_limited", "granted_once", "provisional"})
# OS states no prompt can change: only the user, in the system settings, can.
OS_SETTINGS_ONLY = frozenset({"denied_permanent", "restricted"})
OS_DENIALS = frozenset({"denied", "denied_permanent"})
# What ``unasked`` passes as the instant, which ``decide`` does not read there.
_ANY_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)
# Reasons after which the app must not ask the user at all.
_NO_PROMPT = frozenset({"account_cancelled", "guardian_consent_required"})


# ConsentState, OsState and Decision are values, never changed once made; they are not
# ``frozen`` only because a frozen dataclass takes six times as long to make, and a batch check
# makes up to a hundred of each (BENCHMARKS.md, step 16).


@dataclass(slots=True)
class ConsentState:
    """The part of a consent (current, or as of an instant) that the decision reads."""

    state: str
    event_id: uuid.UUID
    policy_version: str
    recorded_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class SubjectFacts:
    """What the decision needs to know about the subject at the instant it decides for."""

    cancelled: bool = False
    child: bool = False
    # When a verified guardian's consent was first on file (None: never). A child's consent is
    # backed by the guardian only if it was given after that.
    guardian_since: datetime | None = None

    def backs(self, consent: ConsentState) -> bool:
        if not self.child:
            return True
        return self.guardian_since is not None and consent.recorded_at >= self.guardian_since

    @property
    def unguarded_child(self) -> bool:
        return self.child and self.guardian_since is None


@dataclass(frozen=True)
class Policies:
    """Published policy versions: when each took effect, and the material changes."""

    effective_at: dict[str, datetime] = field(default_factory=dict)
    # (effective_at, version, purposes affected) of every material version
    material: tuple[tuple[datetime, str, frozenset[str]], ...] = ()

    def current(self, at: datetime) -> str | None:
        """The newest version in effect at ``at``."""
        in_effect = [(when, version) for version, when in self.effective_at.items() if when <= at]
        return max(in_effect)[1] if in_effect else None

    def superseded_by(self, version: str, purpose: str, at: datetime) -> str | None:
        """The material version in effect at ``at`` that superseded ``version`` for ``purpose``."""
        given_under = self.effective_at.get(version)
        if given_under is None:
            return None
        latest = None
        for effective_at, material_version, purposes in self.material:
            if given_under < effective_at <= at and purpose in purposes:
                latest = material_version
        return latest


@dataclass(slots=True)
class OsState:
    """The last OS observation of a permission on one device."""

    state: str
    last_denied_at: datetime | None


@dataclass(slots=True)
class Decision:
    target: str
    purpose: str
    allowed: bool
    reason: Reason
    state: str
    event_id: uuid.UUID | None
    policy_version: str | None
    may_prompt: bool | None = None
    next_prompt_after: Instant | None = None  # a datetime, with the API's one textual form
    settings_required: bool | None = None


def decide(
    pair: Pair,
    consent: ConsentState | None,
    *,
    subject: SubjectFacts,
    policies: Policies,
    at: datetime,
    os: OsState | None = None,
    device: bool = False,
    prompt_cooldown: timedelta = timedelta(hours=48),
) -> Decision:
    """``device``: the check named a device, so the OS state of ``pair``'s permission counts (an
    unobserved permission counts as ``not_determined``)."""
    if consent is None:
        state = "not_asked"
    else:
        state = consent.state
        if state == "given" and consent.expires_at is not None and consent.expires_at <= at:
            state = "expired"
    reason = _reason(pair, consent, state, subject, policies, at)
    if (
        reason is None
        and device
        and pair.permission
        # never observed: "not_determined", the app has not asked yet
        and (os is None or os.state not in OS_ALLOWS)
    ):
        reason = "os_denied"
    allowed = reason is None or reason == "necessary"
    if consent is None or reason == "necessary":
        event_id, version = None, None
    else:
        event_id, version = consent.event_id, consent.policy_version
    target, purpose = pair.key
    reason = reason or "consent_given"
    if not pair.permission:
        return Decision(target, purpose, allowed, reason, state, event_id, version)
    may_prompt, next_prompt_after, settings_required = _prompt_advice(
        allowed, reason, consent, subject, os, at, prompt_cooldown
    )
    return Decision(
        target, purpose, allowed, reason, state, event_id, version,
        may_prompt, next_prompt_after, settings_required,
    )  # fmt: skip


def unasked(pair: Pair) -> Decision:
    """The decision on ``pair`` wherever ``unasked_applies``: then ``decide`` reads no instant,
    policy version or cool-down, so it is the same decision at every instant and for every such
    subject, worked out once per pair (the check writes it once: ``app.checks.router.Answers``).
    tests/unit/test_decision.py holds ``decide`` to it; a rule that makes that decision read
    more must change ``unasked_applies`` with it."""
    return decide(pair, None, subject=SubjectFacts(), policies=Policies(), at=_ANY_INSTANT)


def unasked_applies(
    pair: Pair,
    consent: ConsentState | None,
    subject: SubjectFacts,
    os: OsState | None,
    device: bool,
) -> bool:
    """Whether ``decide`` with these arguments is ``unasked(pair)``: the subject has no consent
    to the pair, is neither cancelled nor a child, and no OS state is read (none given, and no
    device named for a permission target)."""
    return (
        consent is None
        and os is None
        and not (device and pair.permission)
        and not subject.cancelled
        and not subject.child
    )


def _reason(
    pair: Pair,
    consent: ConsentState | None,
    state: str,
    subject: SubjectFacts,
    policies: Policies,
    at: datetime,
) -> Reason | None:
    if subject.cancelled:
        return "account_cancelled"
    if pair.necessary:
        return "necessary"
    if consent is None:
        # Never asked, and nobody may ask a child: a guardian has to be on file first.
        return "guardian_consent_required" if subject.unguarded_child else "not_asked"
    if consent.state != "given":
        return _DENIED_BY_STATE.get(consent.state, "not_asked")
    if state == "expired":
        return "expired"
    if policies.superseded_by(consent.policy_version, pair.purpose.key, at):
        return "reconsent_required"
    if not subject.backs(consent):
        return "guardian_consent_required"
    return None


def _prompt_advice(
    allowed: bool,
    reason: Reason,
    consent: ConsentState | None,
    subject: SubjectFacts,
    os: OsState | None,
    at: datetime,
    cooldown: timedelta,
) -> tuple[bool, datetime | None, bool]:
    """``may_prompt``, ``next_prompt_after``, ``settings_required`` for a permission. No prompt
    when it is pointless (already allowed), forbidden (a cancelled account, a child with no
    guardian on file), or only the system settings can help; none within ``cooldown`` of the
    user's last refusal of this target for this purpose, in the app's dialog or the OS's."""
    if allowed or reason in _NO_PROMPT or subject.unguarded_child:
        return False, None, False
    if os is not None and os.state in OS_SETTINGS_ONLY:
        return False, None, True
    refusals = [os.last_denied_at] if os is not None and os.last_denied_at is not None else []
    if consent is not None and consent.state in ("refused", "withdrawn"):
        refusals.append(consent.recorded_at)
    if refusals and at < max(refusals) + cooldown:
        return False, max(refusals) + cooldown, False
    return True, None, False
