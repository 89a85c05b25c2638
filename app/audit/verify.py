"""Recompute every subject's hash chain, and check the ledger against the latest checkpoint.

For each subject the first broken link is reported: the sequence number where the chain stops
being what it claims, what was expected there and what was found. Between them, the checks
catch an edited field (the stored hash is not the hash of the fields), a deleted event (a gap in
the sequence, or a prev_hash that names a hash the chain never had), an inserted or reordered
event (the same, once seq and prev_hash no longer follow) and a cut-off end (the subject's head
says more than the ledger holds; and, if both were cut, the checkpoint still remembers the head).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import and_, func, or_
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from app.audit import checkpoints
from app.audit.export import EVENT_COLUMNS, event_record, snapshot
from app.consents.ledger import BrokenLink, ChainWalker
from app.core.db import Database
from app.core.types import isoformat_z, utcnow
from app.models import GENESIS_HASH, Checkpoint, Consent, ConsentEvent, Subject

BATCH = 2000
MAX_PROBLEMS = 1000


Problem = BrokenLink  # problems: gap | broken_link | edited | head_mismatch | truncated


@dataclass
class CheckpointCheck:
    """The latest checkpoint, and the chain of all checkpoints up to it."""

    id: str
    created_at: str
    event_count: int
    signature_valid: bool  # by the service's own key, whatever key the row names
    root_valid: bool  # its stored heads give its signed root
    checkpoints: int = 0  # how many checkpoints the chain holds
    chain_problems: list[str] = field(default_factory=list)  # forged, missing or unsigned ones
    truncated: list[Problem] = field(default_factory=list)


@dataclass
class Report:
    checked_at: datetime
    subjects: int = 0
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0
    current_state: list[Problem] = field(default_factory=list)
    checkpoint: CheckpointCheck | None = None

    @property
    def ok(self) -> bool:
        checkpoint_ok = self.checkpoint is None or (
            self.checkpoint.signature_valid
            and self.checkpoint.root_valid
            and not self.checkpoint.chain_problems
            and not self.checkpoint.truncated
        )
        chains_ok = not self.problems and not self.more_problems
        return chains_ok and not self.current_state and checkpoint_ok

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more_problems += 1


async def verify(
    database: Database,
    key: Ed25519PublicKey,
    *,
    on_total: Callable[[int], None] | None = None,
    on_events: Callable[[int], None] | None = None,
) -> Report:
    """Stream every event, in subject and seq order, with its subject's recorded head: memory
    stays flat whatever the size of the ledger."""
    report = Report(checked_at=utcnow())
    session = snapshot(database)
    try:
        async with session.begin():
            if on_total is not None:
                on_total((await session.exec(select(func.count()).select_from(ConsentEvent))).one())
            chain: ChainWalker | None = None
            head: tuple[int, str] = (0, GENESIS_HASH)

            def finish(chain: ChainWalker, head: tuple[int, str]) -> None:
                report.subjects += 1
                if chain.broken is not None:
                    report.add(chain.broken)
                elif head != (chain.seq, chain.hash):
                    report.add(
                        Problem(
                            chain.subject_id,
                            chain.seq,
                            "head_mismatch",
                            f"{head[0]}:{head[1]}",
                            f"{chain.seq}:{chain.hash}",
                            "the subject's head says the ledger ends elsewhere: events were cut "
                            "off the end, or added behind the service's back",
                        )
                    )

            statement: Any = (
                sa_select(*EVENT_COLUMNS, col(Subject.last_seq), col(Subject.head_hash))
                .outerjoin(Subject, col(Subject.id) == col(ConsentEvent.subject_id))
                .order_by(col(ConsentEvent.subject_id), col(ConsentEvent.seq))
            )
            result = await session.stream(statement.execution_options(yield_per=BATCH))
            async for partition in result.partitions():
                for row in partition:
                    event = event_record(row)
                    if chain is None or chain.subject_id != event["subject_id"]:
                        if chain is not None:
                            finish(chain, head)
                        chain = ChainWalker(event["subject_id"])
                        head = (row.last_seq or 0, row.head_hash or GENESIS_HASH)
                    chain.step(event)
                    report.events += 1
                if on_events is not None:
                    on_events(len(partition))
            if chain is not None:
                finish(chain, head)
            bare = (
                select(Subject.id, Subject.last_seq, Subject.head_hash)
                .where(col(Subject.last_seq) > 0)
                .where(
                    ~select(ConsentEvent.id).where(ConsentEvent.subject_id == Subject.id).exists()
                )
            )
            for subject_id, head_seq, head_hash in await session.exec(bare):
                report.add(
                    Problem(
                        subject_id,
                        1,
                        "truncated",
                        f"{head_seq}:{head_hash}",
                        None,
                        "the subject's head names events the ledger does not hold",
                    )
                )
            await _check_current_state(session, report)
            report.checkpoint = await _check_checkpoints(session, key)
    finally:
        await session.close()
    return report


async def _check_checkpoints(session: Any, key: Ed25519PublicKey) -> CheckpointCheck | None:
    """Every checkpoint must be signed by the service's key and name the one before it; the
    latest one's heads must give its root, and the ledger must still hold each of them."""
    signed = select(Checkpoint).where(checkpoints.SIGNED)  # not those being written
    rows = await session.exec(signed.order_by(col(Checkpoint.created_at)))
    previous: Checkpoint | None = None
    problems, count = [], 0
    for checkpoint in rows:
        count += 1
        if not checkpoints.signature_valid(checkpoint, key):
            problems.append(f"checkpoint {checkpoint.id} is not signed by this service's key")
        expected = (previous.id, previous.merkle_root) if previous else (None, None)
        if (checkpoint.previous_id, checkpoint.previous_root) != expected:
            problems.append(
                f"checkpoint {checkpoint.id} does not follow the one before it "
                f"({expected[0] or 'none'}): a checkpoint was removed or slipped in"
            )
        previous = checkpoint
    latest = previous
    if latest is None:
        return None
    check = CheckpointCheck(
        id=str(latest.id),
        created_at=isoformat_z(latest.created_at),
        event_count=latest.event_count,
        signature_valid=checkpoints.signature_valid(latest, key),
        root_valid=await checkpoints.stored_heads_root(session, latest) == latest.merkle_root,
        checkpoints=count,
        chain_problems=problems,
    )
    for head in await checkpoints.check_against(session, latest):
        check.truncated.append(
            Problem(
                head.subject_id,
                head.seq,
                "truncated",
                head.expected,
                head.found,
                "the ledger no longer holds this subject's head as the checkpoint saw it"
                if head.found is None
                else "this subject's event at the checkpoint's head was rewritten",
            )
        )
    return check


async def _check_current_state(session: Any, report: Report) -> None:
    """The current-state rows the check decides from must be the ledger's last word on each
    pair: same event, same state, same policy version, same expiry."""
    event, consent = ConsentEvent, Consent
    last = (
        select(
            event.subject_id, event.target_key, event.purpose_key, func.max(event.seq).label("seq")
        )
        .group_by(col(event.subject_id), col(event.target_key), col(event.purpose_key))
        .subquery()
    )
    latest = (
        sa_select(event)
        .join(last, and_(col(event.subject_id) == last.c.subject_id, col(event.seq) == last.c.seq))
        .subquery()
    )
    same_pair = and_(
        col(consent.subject_id) == latest.c.subject_id,
        col(consent.target_key) == latest.c.target_key,
        col(consent.purpose_key) == latest.c.purpose_key,
    )
    differs = or_(
        latest.c.id.is_(None),
        col(consent.event_id) != latest.c.id,
        col(consent.state) != latest.c.state,
        col(consent.policy_version) != latest.c.policy_version,
        col(consent.expires_at).is_distinct_from(latest.c.expires_at),
    )
    mismatched = (
        sa_select(
            col(consent.subject_id),
            col(consent.target_key),
            col(consent.purpose_key),
            col(consent.state),
            latest.c.seq,
            latest.c.state,
        )
        .outerjoin(latest, same_pair)
        .where(differs)
    )
    missing = (
        sa_select(latest.c.subject_id, latest.c.target_key, latest.c.purpose_key, latest.c.seq)
        .outerjoin(consent, same_pair)
        .where(col(consent.subject_id).is_(None))
    )
    for subject_id, target, purpose, state, seq, ledger_state in await session.exec(mismatched):
        report.current_state.append(
            Problem(
                subject_id,
                seq or 0,
                "current_state_mismatch",
                ledger_state,
                state,
                f"the current state of ({target}, {purpose}), which checks decide from, is not "
                "the ledger's last event for it",
            )
        )
    for subject_id, target, purpose, seq in await session.exec(missing):
        report.current_state.append(
            Problem(
                subject_id,
                seq,
                "current_state_mismatch",
                "a current-state row",
                None,
                f"the current state of ({target}, {purpose}) is missing",
            )
        )
