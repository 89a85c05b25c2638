"""Signed checkpoints: the event count and a Merkle root over every subject's chain head, signed
with Ed25519, so that an auditor who keeps them outside the system can later prove the ledger
still extends each one (a hash chain alone cannot show that its newest events were cut off).

The Merkle tree, precisely (the README repeats it for auditors):
  leaf   = SHA-256(0x00 || subject_id as UTF-8 || 0x00 || seq in decimal ASCII || 0x00 || head_hash
                   as hex ASCII), one per subject with at least one event, ordered by the UTF-8
                   bytes of subject_id;
  node   = SHA-256(0x01 || left || right), pairing left to right; a lone last node moves up
           unchanged;
  root   = the last node, as hex; SHA-256 of nothing for an empty ledger.
The signed message is the ASCII text
  "consent-ledger checkpoint v1\n{id}\n{created_at}\n{event_count}\n{subject_count}\n{root}\n"
  "{previous checkpoint's id}\n{previous checkpoint's root}\n" ("none" for the first), so the
checkpoints form a chain of their own and none can be removed or slipped in unnoticed.
"""

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Uuid, delete, literal, text, update
from sqlalchemy.orm import aliased
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import Database
from app.core.errors import Conflict
from app.core.types import isoformat_z, utcnow, uuid7
from app.models import Checkpoint, CheckpointHead, ConsentEvent, Subject

logger = logging.getLogger(__name__)

CHECKPOINT_LOCK = 0x636C5F636B70  # "cl_ckp": one checkpoint writer at a time (PostgreSQL)


def signing_key(secret: str) -> Ed25519PrivateKey:
    """The checkpoint key, derived from the service's signing secret (HKDF-SHA256), so it needs
    no key file of its own and is the same on every instance."""
    seed = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"consent-ledger checkpoint signing key v1",
    ).derive(secret.encode())
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes_raw().hex()


def public_key_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _leaf(subject_id: str, seq: int, head_hash: str) -> bytes:
    data = (
        b"\x00" + subject_id.encode() + b"\x00" + str(seq).encode() + b"\x00" + head_hash.encode()
    )
    return hashlib.sha256(data).digest()


class MerkleFold:
    """Builds the root from leaves given in order, in memory proportional to log(n): perfect
    subtrees are merged as soon as they are complete, and what is left is joined right to
    left at the end, which is the same tree as pairing level by level."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash)

    def add(self, subject_id: str, seq: int, head_hash: str) -> None:
        node = (1, _leaf(subject_id, seq, head_hash))
        while self._stack and self._stack[-1][0] == node[0]:
            size, left = self._stack.pop()
            node = (size * 2, _node(left, node[1]))
        self._stack.append(node)

    def root(self) -> str:
        if not self._stack:
            return hashlib.sha256(b"").hexdigest()
        _, right = self._stack[-1]
        for _, left in reversed(self._stack[:-1]):
            right = _node(left, right)
        return right.hex()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# Heads handled between two turns of the event loop. The periodic checkpoint runs inside a
# serving worker, over every subject's head: folded 5,000 at a time, it held the loop (and every
# check waiting on it) for up to 184 ms at a time on a slow machine, ten seconds in all for
# 151,000 subjects (BENCHMARKS.md, step 19).
ROWS_PER_TURN = 500
# The share of its worker's event loop a checkpoint's fold may take: after each ROWS_PER_TURN
# rows it rests three times as long as they took (fetching them included). Unpaced, it took all
# the loop had left, and checks at half the worker's capacity queued behind it for a second
# (BENCHMARKS.md, step 20).
LOOP_SHARE = 0.25


class Pace:
    """Rests between the turns of a long job, so that it takes at most ``share`` of the loop."""

    def __init__(self, share: float = LOOP_SHARE) -> None:
        self._rest = (1 - share) / share
        self._since = time.perf_counter()

    async def turn(self) -> None:
        await asyncio.sleep((time.perf_counter() - self._since) * self._rest)
        self._since = time.perf_counter()


def merkle_root(heads: Iterable[tuple[str, int, str]]) -> str:
    """The root over (subject_id, seq, head_hash) chain heads, in any order."""
    fold = MerkleFold()
    for head in sorted(heads, key=lambda h: h[0].encode()):
        fold.add(*head)
    return fold.root()


def signed_message(checkpoint: Checkpoint) -> str:
    return (
        "consent-ledger checkpoint v1\n"
        f"{checkpoint.id}\n{isoformat_z(checkpoint.created_at)}\n{checkpoint.event_count}\n"
        f"{checkpoint.subject_count}\n{checkpoint.merkle_root}\n"
        f"{checkpoint.previous_id or 'none'}\n{checkpoint.previous_root or 'none'}\n"
    )


def signature_valid(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    """Signed by ``key`` (the service's), not by whatever key the row names."""
    if checkpoint.public_key != key.public_bytes_raw().hex():
        return False
    try:
        key.verify(bytes.fromhex(checkpoint.signature), signed_message(checkpoint).encode())
    except (InvalidSignature, ValueError):
        return False
    return True


class LedgerNoLongerExtendsCheckpoint(Conflict):
    slug = "ledger-no-longer-extends-checkpoint"
    title = "The ledger no longer extends the latest checkpoint"


# A checkpoint is written in steps, so that its long parts (comparing every head, hashing them)
# hold no lock: on SQLite one transaction holding the write lock for all of it kept every
# consent change waiting 4-10 s on 151,000 subjects (BENCHMARKS.md, step 20).
#   0. read only: is one due, and does the ledger still hold every head the latest one saw
#      (refused before anything is copied);
#   1. under the write lock, short: the checkpoint row, unsigned (pending); then, committed
#      apart, a copy of every subject's head, all of one instant (``_copy``: on SQLite one
#      statement under the write lock, on PostgreSQL a range at a time inside one
#      repeatable-read snapshot, paced, with no lock but the pending row's claim);
#   2. read only: the copy must extend the latest checkpoint's heads (no subject gone or back),
#      and the ledger must still hold them (a cut made and grown again since step 0); then the
#      counts and the Merkle root, from the copy, which nothing changes any more;
#   3. under the write lock, short: the row signed, or removed with its heads.
# A pending row is seen by no reader (SIGNED) and stands for a lock: while one was renewed less
# than PENDING_LEASE ago no other checkpoint is begun; its writer renews it every
# PENDING_LEASE / 3 (its created_at, until it is signed with the instant of its copy); one not
# renewed for longer was left by a worker that stopped, and is removed by the next writer.
PENDING_LEASE = timedelta(minutes=15)
SIGNED = col(Checkpoint.signature) != ""


class CheckpointInProgress(Conflict):
    slug = "checkpoint-in-progress"
    title = "Another checkpoint is being written"
    headers = {"Retry-After": "60"}  # noqa: RUF012 (read-only, like the other headers)


async def create_checkpoint(
    database: Database, key: Ed25519PrivateKey, *, unless_newer_than: timedelta | None = None
) -> Checkpoint | None:
    """Write a signed checkpoint of the ledger, chained to the previous one. With
    ``unless_newer_than`` (the periodic job), nothing is written if another worker wrote one
    that recently, if one is being written, or if nothing changed since. Refused (409) if the
    ledger no longer holds every head the previous checkpoint saw: signing it would bury the
    evidence; and (409) while another checkpoint is being written."""
    periodic = unless_newer_than is not None
    async with database.read_sessions() as session, session.begin():
        await _in_background(session)
        latest = await latest_checkpoint(session)
        if unless_newer_than is not None and not await _due(session, latest, unless_newer_than):
            return None
        if await _being_written(session):
            if periodic:
                return None
            raise CheckpointInProgress(
                "another checkpoint is being written; ask again when it is done"
            )
        # Refused before anything is copied; checked again once the copy is taken.
        if latest is not None and (cut := await check_against(session, latest, Pace())):
            raise _cut(cut, latest)
    checkpoint_id = uuid7()
    renewing: asyncio.Task[None] | None = None
    try:
        async with database.write_sessions() as session, session.begin():
            checkpoint = await _begin(session, checkpoint_id, key, latest, periodic)
        if checkpoint is None:
            return None
        renewing = asyncio.create_task(_renew(database, checkpoint_id))
        await _copy(database, checkpoint)
        signed = await _finish(database, key, checkpoint, latest, periodic)
        if signed is None and periodic:
            await _discard(database, checkpoint_id)
        return signed
    except BaseException:
        # Whatever stopped it, even after step 1's commit: no claim is left to lapse.
        await _discard(database, checkpoint_id)
        raise
    finally:
        if renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)


async def _due(session: AsyncSession, latest: Checkpoint | None, interval: timedelta) -> bool:
    if latest is None:
        return True
    if utcnow() - latest.created_at < interval:
        return False
    appended = select(func.coalesce(func.sum(Subject.last_seq), 0))
    return (await session.exec(appended)).one() != latest.event_count  # events only accrue


async def _being_written(session: AsyncSession) -> tuple[uuid.UUID, datetime] | None:
    """The pending checkpoint renewed within its lease, if any."""
    pending = await session.exec(select(Checkpoint.id, Checkpoint.created_at).where(~SIGNED))
    return next((row for row in pending if utcnow() - row[1] < PENDING_LEASE), None)


def _cut(cut: list["HeadProblem"], latest: Checkpoint) -> LedgerNoLongerExtendsCheckpoint:
    return LedgerNoLongerExtendsCheckpoint(
        f"{len(cut)} subject(s), first {cut[0].subject_id!r}, no longer hold the head the "
        f"checkpoint {latest.id} saw; run the verification and investigate before signing"
    )


def _on_postgresql(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def _in_background(session: AsyncSession) -> None:
    """On PostgreSQL, the job's statements in this transaction each take one core, and are not
    compiled (JIT): sorting one checkpoint's heads for the root took both cores for ~100 ms
    with JIT and parallel workers, 56 ms on one without, and checks queued behind it (see
    BENCHMARKS.md, step 31)."""
    if _on_postgresql(session):
        one_core = func.set_config("max_parallel_workers_per_gather", "0", True)
        await session.exec(select(one_core, func.set_config("jit", "off", True)))


async def _lock(session: AsyncSession) -> None:
    """One checkpoint writer at a time (SQLite's write transactions are one at a time anyway)."""
    if _on_postgresql(session):
        await session.exec(select(func.pg_advisory_xact_lock(CHECKPOINT_LOCK)))


async def _begin(
    session: AsyncSession,
    checkpoint_id: uuid.UUID,
    key: Ed25519PrivateKey,
    latest: Checkpoint | None,
    periodic: bool,
) -> Checkpoint | None:
    """Step 1: the pending checkpoint (its heads are ``_copy``'s), if nothing changed since
    step 0."""
    await _lock(session)
    if (found := await _being_written(session)) is not None:
        if periodic:
            return None
        raise CheckpointInProgress(
            f"checkpoint {found[0]} is being written; ask again when it is done"
        )
    for left in (await session.exec(select(Checkpoint.id).where(~SIGNED))).all():
        await _remove(session, left)  # by a worker that stopped while writing it
    now_latest = await latest_checkpoint(session)
    if (now_latest.id if now_latest else None) != (latest.id if latest else None):
        if periodic:
            return None  # another worker has just written one
        raise CheckpointInProgress("another checkpoint was written meanwhile; ask again")
    checkpoint = Checkpoint(
        id=checkpoint_id,
        created_at=utcnow(),
        event_count=0,
        subject_count=0,
        merkle_root="",
        public_key=public_key_hex(key),
        signature="",
        previous_id=latest.id if latest else None,
        previous_root=latest.merkle_root if latest else None,
    )
    session.add(checkpoint)
    return checkpoint


async def _copy(database: Database, checkpoint: Checkpoint) -> None:
    """Step 1's copy: every subject's head, all of one instant. On SQLite one statement, under
    the write lock (a fraction of a second on 151,000 subjects; it is what consent changes wait
    for). On PostgreSQL a range of subjects at a time (HEADS_PER_STATEMENT), resting between
    them (``Pace``), in one repeatable-read transaction: every range is read from the snapshot
    the transaction's first statement took. In one statement the copy kept a core busy for most
    of a second, and checks queued behind it (BENCHMARKS.md, step 31). The checkpoint's
    ``created_at`` becomes the instant of the copy: taken once the transaction holds its
    connection (on SQLite, the write lock), right before the statement that reads the heads
    (on PostgreSQL, that takes the snapshot)."""
    heads = CheckpointHead.__table__  # type: ignore[attr-defined]

    def copied(*ranged: Any) -> Any:
        return heads.insert().from_select(
            ["checkpoint_id", "subject_id", "seq", "head_hash"],
            select(
                literal(checkpoint.id, Uuid()), Subject.id, Subject.last_seq, Subject.head_hash
            ).where(col(Subject.last_seq) > 0, *ranged),
        )

    postgresql = database.dialect == "postgresql"
    snapshot = (
        {"bind": database.engine.execution_options(isolation_level="REPEATABLE READ")}
        if postgresql
        else {}
    )
    async with database.write_sessions(**snapshot) as session, session.begin():
        await session.connection()
        checkpoint.created_at = utcnow()
        if not postgresql:
            await session.exec(copied())
            return
        pace = Pace()
        await _in_background(session)
        async for low, high in _ranges(session, col(Subject.id)):
            await session.exec(copied(*_within(col(Subject.id), low, high)))
            await pace.turn()
        # The planner's statistics have not seen this checkpoint's id: it took the copy for one
        # row and joined it to the previous checkpoint's heads by scanning it once per head,
        # 151,000 x 151,000 (BENCHMARKS.md, step 20). Counted now, in this transaction, from a
        # sample of 3,000 rows of the table (statistics target 10): plenty to tell one
        # checkpoint's share of it, and the plans stay index lookups; from the default 30,000
        # rows it took 250-380 ms of a core, and checks queued behind it (step 31). The
        # statistics of this table stay those of the small sample: each checkpoint's analysis
        # leaves autovacuum too few changes to analyse it again.
        await session.exec(select(func.set_config("default_statistics_target", "10", True)))
        await session.exec(text("ANALYZE checkpoint_head"))  # type: ignore[call-overload]


async def _finish(
    database: Database,
    key: Ed25519PrivateKey,
    checkpoint: Checkpoint,
    latest: Checkpoint | None,
    periodic: bool,
) -> Checkpoint | None:
    """Steps 2 and 3. None if the periodic job found nothing changed."""
    pace = Pace()
    async with database.read_sessions() as session, session.begin():
        await _in_background(session)
        if latest is not None and (
            cut := await _shrunk(session, latest, checkpoint, pace)
            or await check_against(session, latest, pace)
        ):
            raise _cut(cut, latest)
        counts = select(func.count(), func.coalesce(func.sum(CheckpointHead.seq), 0)).where(
            CheckpointHead.checkpoint_id == checkpoint.id
        )
        checkpoint.subject_count, checkpoint.event_count = (await session.exec(counts)).one()
        checkpoint.merkle_root = await stored_heads_root(session, checkpoint, pace)
    if (
        periodic
        and latest is not None
        and (latest.event_count, latest.merkle_root)
        == (checkpoint.event_count, checkpoint.merkle_root)
    ):
        return None
    checkpoint.signature = key.sign(signed_message(checkpoint).encode()).hex()
    async with database.write_sessions() as session, session.begin():
        await _lock(session)
        signed = await session.exec(
            update(Checkpoint)
            .where(col(Checkpoint.id) == checkpoint.id, ~SIGNED)
            .values(
                created_at=checkpoint.created_at,  # renewed while pending: its copy's instant
                subject_count=checkpoint.subject_count,
                event_count=checkpoint.event_count,
                merkle_root=checkpoint.merkle_root,
                signature=checkpoint.signature,
            )
        )
    if signed.rowcount != 1:  # not renewed for a lease (a stalled worker), and given up
        if periodic:
            return None
        raise CheckpointInProgress(
            f"checkpoint {checkpoint.id} was not renewed for {PENDING_LEASE} and was given up "
            "for another one; ask again"
        )
    return checkpoint


async def _shrunk(
    session: AsyncSession, latest: Checkpoint, checkpoint: Checkpoint, pace: Pace
) -> list["HeadProblem"]:
    """The latest checkpoint's heads the copy does not extend: a subject gone, an older head,
    or the same one with another hash."""
    old, new = aliased(CheckpointHead), aliased(CheckpointHead)
    statement = (
        select(old.subject_id, old.seq, old.head_hash, new.head_hash)
        .select_from(old)
        .outerjoin(
            new,
            (col(new.checkpoint_id) == checkpoint.id)
            & (col(new.subject_id) == col(old.subject_id)),
        )
        .where(
            col(old.checkpoint_id) == latest.id,
            col(new.seq).is_(None)
            | (col(new.seq) < col(old.seq))
            | ((col(new.seq) == col(old.seq)) & (col(new.head_hash) != col(old.head_hash))),
        )
        .order_by(col(old.subject_id))
    )
    return await _problems(session, statement, latest.id, col(old.subject_id), pace)


async def _renew(database: Database, checkpoint_id: uuid.UUID) -> None:
    """Renew the pending checkpoint's lease until cancelled."""
    while True:
        await asyncio.sleep(max(PENDING_LEASE.total_seconds() / 3, 0.05))
        try:
            async with database.write_sessions() as session, session.begin():
                await session.exec(
                    update(Checkpoint)
                    .where(col(Checkpoint.id) == checkpoint_id, ~SIGNED)
                    .values(created_at=utcnow())
                )
        except Exception:  # tried again at the next turn; signing notices a lapsed lease
            logger.warning("could not renew checkpoint %s's lease", checkpoint_id, exc_info=True)


async def _remove(session: AsyncSession, checkpoint_id: uuid.UUID) -> None:
    """A pending checkpoint and its heads (nothing, if it has been signed)."""
    pending = select(Checkpoint.id).where(col(Checkpoint.id) == checkpoint_id, ~SIGNED)
    await session.exec(delete(CheckpointHead).where(col(CheckpointHead.checkpoint_id).in_(pending)))
    await session.exec(delete(Checkpoint).where(col(Checkpoint.id) == checkpoint_id, ~SIGNED))


async def _discard(database: Database, checkpoint_id: uuid.UUID) -> None:
    """Remove a pending checkpoint that will not be signed (if this fails too, for example at
    shutdown, the next writer removes it once its lease has lapsed)."""
    async with database.write_sessions() as session, session.begin():
        await _lock(session)
        await _remove(session, checkpoint_id)


async def latest_checkpoint(session: AsyncSession) -> Checkpoint | None:
    statement = (
        select(Checkpoint).where(SIGNED).order_by(col(Checkpoint.created_at).desc()).limit(1)
    )
    return (await session.exec(statement)).first()


async def list_checkpoints(
    session: AsyncSession, *, limit: int, before: datetime | None
) -> list[Checkpoint]:
    statement = (
        select(Checkpoint).where(SIGNED).order_by(col(Checkpoint.created_at).desc()).limit(limit)
    )
    if before is not None:
        statement = statement.where(col(Checkpoint.created_at) < before)
    return list((await session.exec(statement)).all())


@dataclass(frozen=True)
class HeadProblem:
    subject_id: str
    seq: int
    expected: str
    found: str | None


async def check_against(
    session: AsyncSession, checkpoint: Checkpoint, pace: Pace | None = None
) -> list[HeadProblem]:
    """Every subject head the checkpoint saw must still be in the ledger, unchanged: a missing
    one means the ledger was cut back (truncated), a different one that it was rewritten.
    Compared in the database, which returns only the heads that fail; with ``pace``, a range
    of subjects at a time."""
    statement = (
        select(
            CheckpointHead.subject_id,
            CheckpointHead.seq,
            CheckpointHead.head_hash,
            ConsentEvent.hash,
        )
        .select_from(CheckpointHead)
        .outerjoin(
            ConsentEvent,
            (col(ConsentEvent.subject_id) == col(CheckpointHead.subject_id))
            & (col(ConsentEvent.seq) == col(CheckpointHead.seq)),
        )
        .where(
            CheckpointHead.checkpoint_id == checkpoint.id,
            col(ConsentEvent.hash).is_(None) | (col(ConsentEvent.hash) != CheckpointHead.head_hash),
        )
        .order_by(col(CheckpointHead.subject_id))
    )
    return await _problems(session, statement, checkpoint.id, col(CheckpointHead.subject_id), pace)


# Heads copied or compared per statement when a checkpoint is written: the database's part of
# the work, too, in slices with rests between them. In one statement each comparison kept a core
# busy for 1-2 s on 151,000 subjects, and checks queued behind it (BENCHMARKS.md, steps 20-21,
# and for the copy on PostgreSQL step 31).
HEADS_PER_STATEMENT = 5_000


async def _problems(
    session: AsyncSession, statement: Any, checkpoint_id: uuid.UUID, column: Any, pace: Pace | None
) -> list[HeadProblem]:
    """The rows of ``statement``, whose heads are those of ``checkpoint_id`` (``column`` their
    subject id), at once or, with ``pace``, HEADS_PER_STATEMENT subjects at a time."""
    if pace is None:
        return [HeadProblem(*row) for row in await session.exec(statement)]
    problems: list[HeadProblem] = []
    heads = (col(CheckpointHead.subject_id), CheckpointHead.checkpoint_id == checkpoint_id)
    async for low, high in _ranges(session, *heads):
        part = statement.where(*_within(column, low, high))
        problems.extend(HeadProblem(*row) for row in await session.exec(part))
        await pace.turn()
    return problems


async def _ranges(
    session: AsyncSession, key: Any, *where: Any
) -> AsyncIterator[tuple[str | None, str | None]]:
    """The values of ``key`` among the rows ``where`` selects, in consecutive ranges (low, high]
    of HEADS_PER_STATEMENT values, from the first (low None) to the last (high None); each
    upper end found by an offset along the primary key that ``key`` ends."""
    low: str | None = None
    while True:
        values = select(key).where(*where)
        if low is not None:
            values = values.where(key > low)
        last = values.order_by(key).offset(HEADS_PER_STATEMENT - 1).limit(1)
        high = (await session.exec(last)).first()
        yield low, high
        if high is None:
            return
        low = high


def _within(column: Any, low: str | None, high: str | None) -> list[Any]:
    """The conditions that ``column`` is in the range (low, high], None an open end."""
    return [
        *([column > low] if low is not None else []),
        *([column <= high] if high is not None else []),
    ]


def _byte_order(session: AsyncSession) -> Any:
    """Subject ids in the order of their UTF-8 bytes, as the Merkle tree wants them."""
    if _on_postgresql(session):
        return col(CheckpointHead.subject_id).collate("C")
    return col(CheckpointHead.subject_id)  # SQLite compares text as bytes


async def stored_heads_root(
    session: AsyncSession, checkpoint: Checkpoint, pace: Pace | None = None
) -> str:
    """The root over the heads stored for ``checkpoint``, streamed: memory stays small."""
    statement = (
        select(CheckpointHead.subject_id, CheckpointHead.seq, CheckpointHead.head_hash)
        .where(CheckpointHead.checkpoint_id == checkpoint.id)
        .order_by(_byte_order(session))
    )
    fold = MerkleFold()
    result = await session.stream(statement.execution_options(yield_per=ROWS_PER_TURN))
    async for partition in result.partitions():
        for subject_id, seq, head_hash in partition:
            fold.add(subject_id, seq, head_hash)
        if pace is not None:
            await pace.turn()
    return fold.root()


async def stream_heads(database: Database, checkpoint_id: uuid.UUID) -> AsyncIterator[str]:
    """The chain heads a checkpoint saw, as NDJSON, for auditors to recompute its root."""
    async with database.read_sessions() as session, session.begin():
        statement = (
            select(CheckpointHead.subject_id, CheckpointHead.seq, CheckpointHead.head_hash)
            .where(CheckpointHead.checkpoint_id == checkpoint_id)
            .order_by(col(CheckpointHead.subject_id))
        )
        result = await session.stream(statement.execution_options(yield_per=ROWS_PER_TURN))
        async for partition in result.partitions():
            yield "".join(
                json.dumps({"subject_id": s, "seq": q, "head_hash": h}, ensure_ascii=False) + "\n"
                for s, q, h in partition
            )
