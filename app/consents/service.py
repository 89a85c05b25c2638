"""Reading and changing consents. A change appends to the subject's hash-chained ledger and moves
the current state in the same transaction; nothing here updates or deletes an event."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue, Pair
from app.catalogue.service import resolve_pair
from app.checks.decision import ConsentState, Policies, SubjectFacts, decide
from app.consents.ledger import NewEvent, event_hash
from app.consents.schemas import ChangeContext, ConsentList, ConsentPublic
from app.core.config import Settings
from app.core.errors import Conflict, FieldError, InvalidInput
from app.core.security import Principal
from app.core.types import utcnow, uuid7
from app.models import Consent, ConsentEvent, Subject
from app.policies.service import load_policies
from app.subjects.age import AgeFacts, is_child
from app.subjects.service import get_subject, refuse_if_cancelled
from app.webhooks.outbox import announce_events


class NotConsentBased(Conflict):
    slug = "not-consent-based"
    title = "Processing is not consent-based"


class NothingToWithdraw(Conflict):
    slug = "nothing-to-withdraw"
    title = "No consent to withdraw"


@dataclass(frozen=True)
class Change:
    """One validated change: ``loc`` says where it came from in the request, for errors."""

    pair: Pair
    state: str
    expires_at: datetime | None
    evidence: dict[str, str]
    loc: tuple[str | int, ...]


def validate_change(
    catalogue: Catalogue,
    *,
    target: str,
    purpose: str,
    state: str,
    expires_at: datetime | None,
    evidence: dict[str, str],
    loc: tuple[str | int, ...],
) -> Change:
    pair = resolve_pair(catalogue, target, purpose, loc)
    if expires_at is not None and state != "given":
        raise InvalidInput(
            "expires_at can only be set when giving consent",
            errors=[
                FieldError(
                    loc=[*loc, "expires_at"], msg="only with state given", type="value_error"
                )
            ],
        )
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput(
            "expires_at must be in the future",
            errors=[
                FieldError(
                    loc=[*loc, "expires_at"], msg="must be in the future", type="value_error"
                )
            ],
        )
    return Change(pair, state, expires_at, evidence, loc)


class SeparateConsentRequired(InvalidInput):
    slug = "separate-consent-required"
    title = "Separate consent required"


class GuardianConsentRequired(Conflict):
    slug = "guardian-consent-required"
    title = "Guardian consent required"


class PolicyVersionSuperseded(Conflict):
    slug = "policy-version-superseded"
    title = "Policy version superseded"


def needs_separate_consent(pair: Pair) -> bool:
    """Sensitive data, and purposes the law wants asked on their own (PIPL arts. 23, 25, 29, 39)."""
    return pair.target.sensitive or pair.target.separate_consent or pair.purpose.separate_consent


@dataclass(frozen=True)
class EventSpec:
    """One event to append: the change and who made it, how."""

    target: str
    purpose: str
    state: str
    expires_at: datetime | None
    evidence: dict[str, str]
    actor: str
    actor_id: str | None
    source: str
    policy_version: str
    reason: str | None = None
    app_version: str | None = None
    locale: str | None = None


async def current_consents(
    session: AsyncSession, subject_id: str, pairs: Sequence[tuple[str, str]] | None = None
) -> dict[tuple[str, str], Consent]:
    statement = select(Consent).where(Consent.subject_id == subject_id)
    if pairs is not None:
        statement = statement.where(
            col(Consent.target_key).in_({t for t, _ in pairs}),
            col(Consent.purpose_key).in_({p for _, p in pairs}),
        )
    return {(row.target_key, row.purpose_key): row for row in await session.exec(statement)}


class LedgerHead(Protocol):
    """The head of a subject's chain: a Subject row, or the consent writer's row."""

    @property
    def id(self) -> str: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def head_hash(self) -> str: ...
    @property
    def last_event_at(self) -> datetime | None: ...


def chain_events(
    subject: LedgerHead, previous: Mapping[tuple[str, str], str], specs: Sequence[EventSpec]
) -> list[NewEvent]:
    """One event per spec, linked to the subject's chain (``previous``: each pair's state now).

    All carry one instant, never earlier than the subject's last event, so the ledger's time
    order agrees with its sequence even if two workers' clocks disagree.
    """
    now = utcnow()
    if subject.last_event_at is not None and subject.last_event_at > now:
        now = subject.last_event_at
    seq, prev_hash = subject.last_seq, subject.head_hash
    states = dict(previous)
    events: list[NewEvent] = []
    for spec in specs:
        key = (spec.target, spec.purpose)
        seq += 1
        event = NewEvent(
            id=uuid7(),
            subject_id=subject.id,
            seq=seq,
            target_key=spec.target,
            purpose_key=spec.purpose,
            state=spec.state,
            previous_state=states.get(key, "not_asked"),
            actor=spec.actor,
            actor_id=spec.actor_id,
            source=spec.source,
            policy_version=spec.policy_version,
            recorded_at=now,
            expires_at=spec.expires_at,
            evidence=spec.evidence,
            app_version=spec.app_version,
            locale=spec.locale,
            reason=spec.reason,
            prev_hash=prev_hash,
            hash="",
        )
        event.hash = prev_hash = event_hash(event)
        states[key] = spec.state
        events.append(event)
    return events


async def record_events(
    session: AsyncSession,
    subject: Subject,
    current: dict[tuple[str, str], Consent],
    specs: Sequence[EventSpec],
) -> datetime:
    """Append one event per spec to the subject's chain and move the current state with it.

    Withdrawals and revocations are announced to the recipients relying on them (the outbox).
    The caller holds the subject's lock (``lock_subject``) and owns the transaction. Returns the
    instant recorded.
    """
    events = chain_events(subject, {key: row.state for key, row in current.items()}, specs)
    session.add_all([event.model() for event in events])
    await session.flush()  # events first: the consent rows refer to them
    await announce_events(session, events)  # the outbox commits or rolls back with them

    for event in events:
        key = (event.target_key, event.purpose_key)
        row = current.get(key)
        if row is None:
            row = current[key] = Consent(
                subject_id=subject.id,
                target_key=event.target_key,
                purpose_key=event.purpose_key,
                state=event.state,
                policy_version=event.policy_version,
                event_id=event.id,
                recorded_at=event.recorded_at,
                expires_at=event.expires_at,
            )
        else:
            row.state = event.state
            row.policy_version = event.policy_version
            row.event_id = event.id
            row.recorded_at = event.recorded_at
            row.expires_at = event.expires_at
        session.add(row)
    head = events[-1]
    subject.last_seq, subject.head_hash = head.seq, head.hash
    subject.last_event_at = head.recorded_at
    subject.updated_at = utcnow()
    session.add(subject)
    await session.flush()
    return head.recorded_at


def _policy_version_for(
    context: ChangeContext, changes: Sequence[Change], policies: Policies, now: datetime
) -> str:
    """The version the changes are made under: the named one, or the current one. A named
    version must be in effect, and no material change may have superseded it for a purpose
    being given (409, naming the current version)."""
    current = policies.current(now)
    if current is None:
        raise Conflict("no policy version is in effect yet; publish one first")
    if context.policy_version is None:
        return current
    version = context.policy_version
    effective_at = policies.effective_at.get(version)
    if effective_at is None or effective_at > now:
        problem = "unknown policy version" if effective_at is None else "not in effect yet"
        raise InvalidInput(
            f"{problem} {version!r}; the current one is {current!r}",
            errors=[
                FieldError(
                    loc=["body", "policy_version"], msg=problem, type="unknown_policy_version"
                )
            ],
        )
    stale = [
        c
        for c in changes
        if c.state == "given" and policies.superseded_by(version, c.pair.purpose.key, now)
    ]
    if stale:
        raise PolicyVersionSuperseded(
            f"policy version {version!r} was superseded by a material change for "
            f"{', '.join(sorted({c.pair.purpose.key for c in stale}))}; ask again under the "
            f"current version {current!r}",
            errors=[
                _item_error(c, "policy version superseded", "policy_superseded") for c in stale
            ],
            current_version=current,
        )
    return version


def check_changes(changes: Sequence[Change], context: ChangeContext) -> None:
    """What can be refused from the request alone: a necessary purpose (not consent-based), and
    a separate consent without the dedicated prompt it needs."""
    necessary = [c for c in changes if c.pair.necessary]
    if necessary:
        raise NotConsentBased(
            "processing for a necessary, contract-based purpose does not rest on consent and "
            "cannot be given, refused or withdrawn; it ends only when the account is cancelled "
            "(account cancellation, a data-subject request)",
            errors=[
                _item_error(c, "necessary for the contract", "not_consent_based") for c in necessary
            ],
        )
    separate = [c for c in changes if c.state == "given" and needs_separate_consent(c.pair)]
    # A request-level prompt_id stands for one dedicated prompt, so it can cover one item only;
    # several such items in one request each need the prompt_id of their own prompt.
    shared_prompt = context.evidence.get("prompt_id") if len(separate) == 1 else None
    unprompted = [c for c in separate if not (c.evidence.get("prompt_id") or shared_prompt)]
    if unprompted:
        raise SeparateConsentRequired(
            "sensitive data, sharing with third parties and cross-border transfer need a consent "
            "of their own: give each with evidence.prompt_id naming the dedicated prompt the user "
            "answered (an accept-all screen is not enough; in a batch, on each item)",
            errors=[
                _item_error(c, "needs evidence.prompt_id of a dedicated prompt", "separate_consent")
                for c in unprompted
            ],
        )


class WritableSubject(LedgerHead, AgeFacts, Protocol):
    """What a consent change reads of its (locked) subject."""

    @property
    def status(self) -> str: ...
    @property
    def guardian_verified_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class Planned:
    """A checked change, ready to store: its events (in chain order) and the answer."""

    events: list[NewEvent]
    items: list[ConsentPublic]


def plan_changes(
    principal: Principal,
    settings: Settings,
    subject: WritableSubject,
    guardian_ref: str | None,
    current: Mapping[tuple[str, str], ConsentState],
    policies: Policies,
    changes: Sequence[Change],
    context: ChangeContext,
) -> Planned:
    """Every rule of a consent change, on what was read under the subject's lock: the policy
    version, a cancelled account, a child's guardian, what can be withdrawn, the validity limit.
    Conflicts are collected over the whole request, so the error names every item that cannot
    be written; nothing is stored unless the whole request passes (``check_changes`` first).

    ``guardian_ref``: the latest verified guardian on file, if any.
    """
    now = utcnow()
    policy_version = _policy_version_for(context, changes, policies, now)
    refuse_if_cancelled(subject, "consents cannot change")
    child = is_child(subject, settings, now)
    guardian = guardian_ref if child else None
    grants = [c for c in changes if c.state == "given"]
    if child and grants and (guardian is None or principal.subject_id is not None):
        raise GuardianConsentRequired(
            f"subject {subject.id!r} is a child in {subject.jurisdiction}: "
            + (
                "an optional consent needs a verified guardian on file first "
                f"(POST /v1/subjects/{subject.id}/guardian-consents)"
                if guardian is None
                else "only the guardian gives consent for a child, through the app's backend, "
                "not with the child's own subject token"
            ),
            errors=[_item_error(c, "guardian consent required", "guardian") for c in grants],
        )

    keys = [(c.pair.target.key, c.pair.purpose.key) for c in changes]
    not_given = [
        c
        for c, key in zip(changes, keys, strict=True)
        if c.state == "withdrawn" and getattr(current.get(key), "state", None) != "given"
    ]
    if not_given:
        raise NothingToWithdraw(
            "only a given consent can be withdrawn; record `refused` for one never given",
            errors=[
                _item_error(c, "consent is not given", "nothing_to_withdraw") for c in not_given
            ],
        )

    recorded_by = _recorded_by(principal)
    if guardian is not None and principal.subject_id is None:  # the guardian acts for the child
        actor, actor_id = "guardian", guardian
        recorded_by = {"recorded_by": f"{principal.actor}:{principal.name}"}
    else:
        actor, actor_id = principal.actor, principal.name
    specs = []
    for change, key in zip(changes, keys, strict=True):
        previous = current.get(key)
        expires_at = change.expires_at
        validity = change.pair.purpose.validity_days
        if change.state == "given" and validity is not None:
            limit = now + timedelta(days=validity)
            expires_at = min(expires_at, limit) if expires_at else limit
        renewal = change.state == "given" and previous is not None and previous.state == "given"
        specs.append(
            EventSpec(
                target=key[0],
                purpose=key[1],
                state=change.state,
                expires_at=expires_at,
                evidence={**context.evidence, **change.evidence, **recorded_by},
                actor=actor,
                actor_id=actor_id,
                source=context.source,
                policy_version=policy_version,
                reason="renewal" if renewal else None,
                app_version=context.app_version,
                locale=context.locale,
            )
        )
    events = chain_events(subject, {key: state.state for key, state in current.items()}, specs)
    at = events[-1].recorded_at
    facts = SubjectFacts(child=child, guardian_since=subject.guardian_verified_at)
    pairs = dict(zip(keys, (c.pair for c in changes), strict=True))
    return Planned(
        events=events,
        items=[_public(pairs[_key(e)], _state(e), facts, policies, at, settings) for e in events],
    )


def _key(event: NewEvent) -> tuple[str, str]:
    return (event.target_key, event.purpose_key)


async def revoke_unbacked(session: AsyncSession, settings: Settings, subject: Subject) -> int:
    """A subject found to be a child: revoke every given consent no guardian backs (all of them
    if no guardian is on file, else those given before one was), in the caller's transaction
    ("we will try to delete the relevant data as soon as possible")."""
    if not is_child(subject, settings, utcnow()):
        return 0
    since = subject.guardian_verified_at
    current = await current_consents(session, subject.id)
    unbacked = [
        row
        for row in current.values()
        if row.state == "given" and (since is None or row.recorded_at < since)
    ]
    specs = [
        EventSpec(
            target=row.target_key,
            purpose=row.purpose_key,
            state="revoked",
            expires_at=None,
            evidence={},
            actor="system",
            actor_id=None,
            source="api",
            policy_version=row.policy_version,
            reason=f"the subject is a child in {subject.jurisdiction} and no verified guardian "
            "consent backs this consent",
        )
        for row in unbacked
    ]
    if specs:
        await record_events(session, subject, current, specs)
    return len(specs)


def _recorded_by(principal: Principal) -> dict[str, str]:
    """For a change made with a subject token: the key that minted the token."""
    return {"recorded_by": principal.issued_by} if principal.issued_by else {}


def _item_error(change: Change, msg: str, type_: str) -> FieldError:
    return FieldError(loc=list(change.loc), msg=msg, type=type_)


def _state(row: Consent | ConsentEvent | NewEvent) -> ConsentState:
    return ConsentState(
        state=row.state,
        event_id=row.event_id if isinstance(row, Consent) else row.id,
        policy_version=row.policy_version,
        recorded_at=row.recorded_at,
        expires_at=row.expires_at,
    )


def _public(
    pair: Pair,
    consent: ConsentState | None,
    facts: SubjectFacts,
    policies: Policies,
    at: datetime,
    settings: Settings,
) -> ConsentPublic:
    decision = decide(
        pair,
        consent,
        subject=facts,
        policies=policies,
        at=at,
        prompt_cooldown=timedelta(hours=settings.prompt_cooldown_hours),
    )
    return ConsentPublic(
        target=pair.target.key,
        purpose=pair.purpose.key,
        state=decision.state,
        policy_version=consent.policy_version if consent else None,
        event_id=consent.event_id if consent else None,
        recorded_at=consent.recorded_at if consent else None,
        expires_at=consent.expires_at if consent else None,
        allowed=decision.allowed,
        reason=decision.reason,
        renewal_required=decision.reason == "reconsent_required",
    )


async def list_consents(
    session: AsyncSession,
    catalogue: Catalogue,
    settings: Settings,
    subject_id: str,
    as_of: datetime | None,
) -> ConsentList:
    """Every pair the catalogue allows, with its state and decision now or ``as_of`` an instant.

    As of a past instant the consents, the policy versions and the guardian are those of that
    instant; the subject's age attributes are today's (they are not versioned).
    """
    subject = await get_subject(session, subject_id)
    policies = await load_policies(session)
    states: dict[tuple[str, str], ConsentState] = {}
    if as_of is None:
        states = {
            key: _state(row) for key, row in (await current_consents(session, subject_id)).items()
        }
        at, cancelled = utcnow(), subject.status == "cancelled"
    else:
        events = await session.exec(
            select(ConsentEvent)
            .where(ConsentEvent.subject_id == subject_id, col(ConsentEvent.recorded_at) <= as_of)
            .order_by(col(ConsentEvent.seq))
        )
        for event in events:  # the last event per pair wins
            states[(event.target_key, event.purpose_key)] = _state(event)
        at, cancelled = as_of, False
    since = subject.guardian_verified_at
    facts = SubjectFacts(
        cancelled=cancelled,
        child=is_child(subject, settings, at),
        guardian_since=since if since is not None and since <= at else None,
    )
    items = [
        _public(pair, states.get(key), facts, policies, at, settings)
        for key, pair in catalogue.pairs.items()
    ]
    return ConsentList(subject_id=subject_id, as_of=as_of, items=items)
