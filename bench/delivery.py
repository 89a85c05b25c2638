"""How much a webhook delivery costs the worker that sends it:

    python -m bench.delivery [--backend sqlite|postgresql|both] [--messages 2000] [--rounds 3]

In a scratch database (SQLite in a temporary directory; PostgreSQL in a database dropped and made
again), one enabled recipient whose URL is a closed port on loopback, so every post fails at once
and what is measured is the worker's own work (claim, post, record the outcome), not a receiver's;
``--messages`` due messages; one ``Deliverer`` runs rounds until none is due (retries are an hour
away), and every attempt is checked to be recorded. Prints the wall-clock and CPU time per
message, per drain of the whole batch. To compare two versions, run this file with each checkout
on ``PYTHONPATH`` (an older one may not have it: ``PYTHONPATH=../before python bench/delivery.py``),
one after the other, more than once.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings
from app.core.db import Database
from app.models import Recipient, WebhookAttempt, WebhookMessage
from app.webhooks.delivery import Deliverer
from app.webhooks.signing import new_secret
from bench.__main__ import PG_ADMIN, SECRET, _pg, free_port, run

PG_DB = "consent_ledger_bench_delivery"


def scratch(backend: str, workdir: Path) -> str:
    """A migrated, empty database."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'delivery.db'}"
    else:
        for statement in (f"DROP DATABASE IF EXISTS {PG_DB}", f"CREATE DATABASE {PG_DB}"):
            run(["psql", PG_ADMIN, "-q", "-c", statement])
        url = _pg(PG_DB).replace("postgresql://", "postgresql+asyncpg://")
    run([sys.executable, "-m", "app.cli", "migrate"], {"DATABASE_URL": url})
    return url


async def due_messages(url: str, messages: int) -> None:
    """One enabled recipient that nothing answers for, and ``messages`` due to it."""
    now = datetime.now(UTC)
    engine = create_async_engine(url)
    async with AsyncSession(engine) as session, session.begin():
        recipient = Recipient(
            name=f"bench-closed-port-{os.urandom(3).hex()}",
            kind="processor",
            url=f"http://127.0.0.1:{free_port()}/webhooks",  # nothing listens there
            secret=new_secret(),
            created_at=now,
            created_by="bench",
            updated_at=now,
        )
        session.add(recipient)
        await session.flush()
        session.add_all(
            WebhookMessage(
                recipient_id=recipient.id,
                subject_id=f"bench-{n:08d}",
                type="consent.withdrawn",
                payload={"type": "consent.withdrawn", "data": {"subject_id": f"bench-{n:08d}"}},
                created_at=now,
                status="pending",
                next_attempt_at=now,
                retry_from=now,
            )
            for n in range(messages)
        )
    await engine.dispose()


select_attempts = func.count().select().select_from(WebhookAttempt)


async def drain(url: str) -> tuple[int, float, float]:
    """Delivery rounds until none is due: (messages, wall seconds, CPU seconds)."""
    settings = Settings(
        database_url=url,
        secret_key=SECRET,
        webhook_worker="off",
        webhook_allow_http=True,  # the closed port is on loopback, without TLS
        webhook_retry_seconds=3600,  # no retry comes due during the run
    )
    database = Database(settings)
    deliverer = Deliverer(settings, database)
    try:
        async with database.read_sessions() as session:
            before = await session.scalar(select_attempts) or 0
        wall, cpu, total = time.perf_counter(), time.process_time(), 0
        while attempted := await deliverer.deliver_due():
            total += attempted
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        async with database.read_sessions() as session:
            recorded = (await session.scalar(select_attempts) or 0) - before
        if recorded != total:  # a failing record is logged, not raised: it would look fast
            raise SystemExit(f"{total} messages attempted, {recorded} attempts recorded")
        return total, wall, cpu
    finally:
        await deliverer.aclose()
        await database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            url = scratch(backend, Path(tmp))
            for n in range(args.rounds):
                asyncio.run(due_messages(url, args.messages))
                total, wall, cpu = asyncio.run(drain(url))
                print(
                    f"{backend} round {n + 1}: {total} messages, per message "
                    f"{wall / total * 1000:.2f} ms wall-clock, {cpu / total * 1000:.2f} ms CPU",
                    flush=True,
                )
            if backend != "sqlite":
                run(["psql", PG_ADMIN, "-q", "-c", f"DROP DATABASE {PG_DB}"])


if __name__ == "__main__":
    main()
