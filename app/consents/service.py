"""Reading and changing consents. A change appends to the subject's hash-chained ledger and moves
the current state in the same transaction; nothing here updates or deletes an event."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue, Pair
from app.catalogue.service import current_policy_version, policy_version_exists, resolve_pair
from app.checks.decision import ConsentState, decide
from app.consents.ledger import event_hash
from app.consents.schemas import ChangeContext, ConsentList, ConsentPublic
from app.core.errors import Conflict, FieldError, InvalidInput
from app.core.security import Principal
from app.core.types import utcnow, uuid7
from app.models import Consent, ConsentEvent
from app.subjects.service import get_subject, lock_subject


class NotConsentBased(Conflict):
    slug = "not-consent-based"
    title = "Processing is not consent-based"


class NothingToWithdraw(Conflict):
    slug = "nothing-to-withdraw"
    title = "No consent to withdraw"


class SubjectCancelled(Conflict):
    slug = "subject-cancelled"
    title = "Account cancelled"


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


async def apply_changes(
    session: AsyncSession,
    principal: Principal,
    subject_id: str,
    changes: Sequence[Change],
    context: ChangeContext,
) -> list[ConsentPublic]:
    """Append one event per change and move the current state; all or nothing.

    Runs inside the caller's transaction. Conflicts are collected over the whole request so the
    error names every item that cannot be written.
    """
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
    if context.policy_version is None:
        policy_version = await current_policy_version(session)
        if policy_version is None:
            raise Conflict("no policy version is in effect yet; publish one first")
    else:
        policy_version = context.policy_version
        if not await policy_version_exists(session, policy_version):
            raise InvalidInput(
                f"unknown policy version {policy_version!r}; "
                "GET /v1/catalogue names the current one",
                errors=[
                    FieldError(
                        loc=["body", "policy_version"],
                        msg="unknown policy version",
                        type="unknown_policy_version",
                    )
                ],
            )

    subject = await lock_subject(session, subject_id)
    if subject.status == "cancelled":
        raise SubjectCancelled(
            f"subject {subject_id!r} cancelled the account; consents cannot change"
        )

    keys = [(c.pair.target.key, c.pair.purpose.key) for c in changes]
    current = {
        (row.target_key, row.purpose_key): row
        for row in await session.exec(
            select(Consent).where(
                Consent.subject_id == subject_id,
                col(Consent.target_key).in_({t for t, _ in keys}),
                col(Consent.purpose_key).in_({p for _, p in keys}),
            )
        )
    }
    not_given = [
        c
        for c in changes
        if c.state == "withdrawn"
        and getattr(current.get((c.pair.target.key, c.pair.purpose.key)), "state", None) != "given"
    ]
    if not_given:
        raise NothingToWithdraw(
            "only a given consent can be withdrawn; record `refused` for one never given",
            errors=[
                _item_error(c, "consent is not given", "nothing_to_withdraw") for c in not_given
            ],
        )

    # One instant for the whole request, never earlier than the subject's last event, so the
    # ledger's time order agrees with its sequence even if the clocks of two workers disagree.
    now = utcnow()
    if subject.last_event_at is not None and subject.last_event_at > now:
        now = subject.last_event_at
    seq, prev_hash = subject.last_seq, subject.head_hash
    events: list[ConsentEvent] = []
    for change in changes:
        target, purpose = change.pair.target.key, change.pair.purpose.key
        row = current.get((target, purpose))
        seq += 1
        event = ConsentEvent(
            id=uuid7(),
            subject_id=subject_id,
            seq=seq,
            target_key=target,
            purpose_key=purpose,
            state=change.state,
            previous_state=row.state if row else "not_asked",
            actor=principal.actor,
            actor_id=principal.name,
            source=context.source,
            policy_version=policy_version,
            recorded_at=now,
            expires_at=change.expires_at,
            evidence={**context.evidence, **change.evidence, **_recorded_by(principal)},
            app_version=context.app_version,
            locale=context.locale,
            reason=None,
            prev_hash=prev_hash,
            hash="",
        )
        event.hash = prev_hash = event_hash(event)
        events.append(event)
    session.add_all(events)
    await session.flush()  # events first: the consent rows refer to them

    results = []
    for event in events:
        key = (event.target_key, event.purpose_key)
        row = current.get(key)
        if row is None:
            row = current[key] = Consent(
                subject_id=subject_id,
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
    subject.last_seq, subject.head_hash, subject.last_event_at = seq, prev_hash, now
    subject.updated_at = utcnow()
    session.add(subject)
    await session.flush()

    pairs = {(c.pair.target.key, c.pair.purpose.key): c.pair for c in changes}
    for key in dict.fromkeys(keys):
        results.append(_public(pairs[key], _state(current[key]), cancelled=False, at=now))
    return results


def _recorded_by(principal: Principal) -> dict[str, str]:
    """For a change made with a subject token: the key that minted the token."""
    return {"recorded_by": principal.issued_by} if principal.issued_by else {}


def _item_error(change: Change, msg: str, type_: str) -> FieldError:
    return FieldError(loc=list(change.loc), msg=msg, type=type_)


def _state(row: Consent | ConsentEvent) -> ConsentState:
    return ConsentState(
        state=row.state,
        event_id=row.event_id if isinstance(row, Consent) else row.id,
        policy_version=row.policy_version,
        recorded_at=row.recorded_at,
        expires_at=row.expires_at,
    )


def _public(
    pair: Pair, consent: ConsentState | None, *, cancelled: bool, at: datetime
) -> ConsentPublic:
    decision = decide(pair, consent, cancelled=cancelled, at=at)
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
    )


async def list_consents(
    session: AsyncSession, catalogue: Catalogue, subject_id: str, as_of: datetime | None
) -> ConsentList:
    """Every pair the catalogue allows, with its state and decision now or ``as_of`` an instant."""
    subject = await get_subject(session, subject_id)
    states: dict[tuple[str, str], ConsentState] = {}
    if as_of is None:
        rows = await session.exec(select(Consent).where(Consent.subject_id == subject_id))
        states = {(r.target_key, r.purpose_key): _state(r) for r in rows}
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
    items = [
        _public(pair, states.get(key), cancelled=cancelled, at=at)
        for key, pair in catalogue.pairs.items()
    ]
    return ConsentList(subject_id=subject_id, as_of=as_of, items=items)
