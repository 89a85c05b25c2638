"""Export benchmark: time and peak memory of `consent-ledger export` over N events.

Seeds a fresh database with N valid, hash-chained events (10 per subject), then runs the real
command in a child process and reads its peak resident memory from the kernel (ru_maxrss). A run
that exports nothing (a filter that matches no subject) gives the baseline of the process itself,
so the figures say how much memory the export adds, and whether that grows with N.

    python bench/export.py --events 100000 1000000                    # SQLite, in a temp dir
    python bench/export.py --events 100000 1000000 \\
        --database-url postgresql://postgres@127.0.0.1/bench_export   # PostgreSQL (wiped!)

Not part of the test suite. Results go in BENCHMARKS.md with the command that produced them.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import load_catalogue
from app.catalogue.service import sync_catalogue
from app.consents.ledger import canonical_hash
from app.core.config import normalise_database_url
from app.core.migrate import upgrade
from app.core.types import isoformat_z
from app.models import GENESIS_HASH, ConsentEvent, Subject

PER_SUBJECT = 10
TARGETS = ("gender", "age", "device.model", "device.os_version", "device.resolution")
SECRET = "bench-only-" + uuid.uuid4().hex + uuid.uuid4().hex


async def seed(url: str, events: int) -> None:
    engine = create_async_engine(url)
    async with AsyncSession(engine) as session, session.begin():
        await sync_catalogue(session, load_catalogue())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch_events: list[dict[str, object]] = []
    batch_subjects: list[dict[str, object]] = []

    async def flush() -> None:
        async with engine.begin() as connection:
            if batch_subjects:
                await connection.execute(insert(Subject), batch_subjects)
            await connection.execute(insert(ConsentEvent), batch_events)
        batch_events.clear()
        batch_subjects.clear()

    for s in range(events // PER_SUBJECT):
        subject_id = f"bench-{s:07d}"
        prev, states = GENESIS_HASH, {}
        for seq in range(1, PER_SUBJECT + 1):
            target = TARGETS[seq % len(TARGETS)]
            state = (
                "given" if seq % 3 else "withdrawn" if states.get(target) == "given" else "refused"
            )
            recorded = start + timedelta(seconds=s * PER_SUBJECT + seq)
            fields = {
                "id": str(uuid.uuid4()), "subject_id": subject_id, "seq": seq, "target": target,
                "purpose": "service_improvement", "state": state,
                "previous_state": states.get(target, "not_asked"), "actor": "app",
                "actor_id": "bench", "source": "api", "policy_version": "2022-02",
                "recorded_at": isoformat_z(recorded), "expires_at": None,
                "evidence": {"screen": "privacy"}, "app_version": None, "locale": None,
                "reason": None, "prev_hash": prev,
            }  # fmt: skip
            prev = canonical_hash(fields)
            states[target] = state
            batch_events.append(
                fields
                | {
                    "id": uuid.UUID(fields["id"]),
                    "target_key": target,
                    "purpose_key": "service_improvement",
                    "recorded_at": recorded,
                    "hash": prev,
                }
            )
        batch_subjects.append(
            {
                "id": subject_id,
                "jurisdiction": "CN",
                "status": "active",
                "created_at": start,
                "updated_at": start,
                "last_seq": PER_SUBJECT,
                "head_hash": prev,
                "last_event_at": recorded,
            }
        )
        if len(batch_events) >= 10_000:
            await flush()
    if batch_events:
        await flush()
    await engine.dispose()


def run_export(url: str, workdir: Path, *extra: str) -> tuple[float, int, int]:
    """(seconds, peak RSS in MiB, bytes written) of one `consent-ledger export` process."""
    out = workdir / "export.out"
    env = os.environ | {"DATABASE_URL": url, "CONSENT_LEDGER_SECRET_KEY": SECRET}
    began = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "export", "--format", "ndjson", "-o", str(out), *extra],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the maximum of all
    seconds = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"export failed with status {child.returncode}")
    return seconds, usage.ru_maxrss // 1024, out.stat().st_size


def fresh_database(url: str | None, workdir: Path) -> str:
    if url is None:
        return f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    url = normalise_database_url(url)

    async def reset() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    asyncio.run(reset())
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000])
    parser.add_argument("--database-url", help="a PostgreSQL database to wipe; default SQLite")
    args = parser.parse_args()
    backend = "postgresql" if args.database_url else "sqlite"
    print("| backend | events | export time | events/s | peak RSS | baseline RSS | output |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for events in args.events:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            url = fresh_database(args.database_url, workdir)
            upgrade(url)
            began = time.perf_counter()
            asyncio.run(seed(url, events))
            print(
                f"  seeded {events:,} events in {time.perf_counter() - began:.0f} s",
                file=sys.stderr,
            )
            _, baseline, _ = run_export(url, workdir, "--subject", "nobody")
            seconds, peak, size = run_export(url, workdir)
            print(
                f"| {backend} | {events:,} | {seconds:.1f} s | {events / seconds:,.0f} | "
                f"{peak} MiB | {baseline} MiB | {size / 2**20:.0f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
