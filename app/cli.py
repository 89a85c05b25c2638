"""The ``consent-ledger`` command."""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TextIO, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings, get_settings
from app.core.errors import AppError
from app.core.security import ROLES
from app.core.types import isoformat_z

if TYPE_CHECKING:
    from app.audit.filters import EventFilter
    from app.audit.verify import Report

T = TypeVar("T")


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            raise CommandError(f"invalid settings: {message}") from None
        name = str(error["loc"][0]).upper()
        if name != "DATABASE_URL":
            name = "CONSENT_LEDGER_" + name
        raise CommandError(f"invalid setting {name}: {message}") from None


def _migrate(settings: Settings) -> None:
    from app.core.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except (SQLAlchemyError, OSError) as exc:
        raise CommandError(f"cannot migrate the database: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return f"{type(original).__name__}: {text[0] if text else ''}"


def cmd_migrate(args: argparse.Namespace) -> None:
    settings = _settings()
    _migrate(settings)
    print(f"database is up to date ({_redacted(settings.database_url)})")


def _signing_secret(settings: Settings) -> None:
    """Fail now, in one line, rather than in every worker; on the embedded default this also
    creates the secret file once, before the workers start."""
    from app.core.signing import SecretError, load_signing_secret

    try:
        load_signing_secret(settings)
    except SecretError as exc:
        raise CommandError(str(exc)) from None


def _ready_database(settings: Settings) -> None:
    """Migrate the embedded default; refuse a PostgreSQL database that is not migrated."""
    if settings.is_sqlite:
        _migrate(settings)  # the embedded default just works on first start
        return
    from app.core.migrate import current_revision, head_revision

    try:
        current = asyncio.run(current_revision(settings.database_url))
    except (SQLAlchemyError, OSError) as exc:
        raise CommandError(f"cannot reach the database: {_first_line(exc)}") from None
    if current != head_revision():
        raise CommandError("the database is not migrated: run `consent-ledger migrate` first")


def _with_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from app.core.db import Database

    async def run() -> T:
        database = Database(settings)
        try:
            async with database.write_sessions() as session, session.begin():
                return await work(session)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except AppError as exc:
        raise CommandError(exc.detail) from None
    except (SQLAlchemyError, OSError) as exc:
        raise CommandError(f"cannot reach the database: {_first_line(exc)}") from None


def _first_admin_key(settings: Settings) -> str | None:
    """On the embedded default, a database with no keys at all gets an admin key."""
    from app.auth import service

    async def work(session: AsyncSession) -> str | None:
        if await service.count_keys(session):
            return None
        _key, secret = await service.create_key(session, "first-admin", "admin")
        return secret

    return _with_session(settings, work)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = _settings()
    _signing_secret(settings)
    _ready_database(settings)
    if settings.is_sqlite and (secret := _first_admin_key(settings)):
        print(
            "\nNo API keys existed, so this is the first admin key, named 'first-admin'.\n"
            "It is shown only this once; store it now. Send it as `Authorization: Bearer <key>`,\n"
            "and create keys for your services with `consent-ledger keys create`.\n\n"
            f"    {secret}\n",
            flush=True,
        )
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    print(
        f"Consent Ledger on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''}, "
        f"database {_redacted(settings.database_url)}); API docs at /docs",
        flush=True,
    )
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        access_log=args.access_log,
        proxy_headers=True,
    )


def cmd_keys_create(args: argparse.Namespace) -> None:
    from app.auth import service
    from app.auth.schemas import ApiKeyCreate

    settings = _settings()
    try:
        payload = ApiKeyCreate(name=args.name, role=args.role)
    except ValidationError as exc:
        raise CommandError(f"invalid key name {args.name!r}: " + _first_error(exc)) from None
    _ready_database(settings)

    async def work(session: AsyncSession) -> str:
        _key, secret = await service.create_key(session, payload.name, payload.role)
        return secret

    secret = _with_session(settings, work)
    print(f"created the {payload.role} key {payload.name!r}; it is shown only this once:")
    print(secret)


def cmd_keys_list(args: argparse.Namespace) -> None:
    from app.auth import service

    settings = _settings()
    _ready_database(settings)
    keys = _with_session(settings, service.list_keys)
    if not keys:
        print("no keys; create one with `consent-ledger keys create --role ROLE --name NAME`")
        return
    rows = [("NAME", "ROLE", "PREFIX", "CREATED", "LAST USED", "REVOKED")]
    for key in keys:
        rows.append(
            (
                key.name,
                key.role,
                key.prefix + "…",
                isoformat_z(key.created_at)[:19] + "Z",
                isoformat_z(key.last_used_at)[:16] + "Z" if key.last_used_at else "never",
                isoformat_z(key.revoked_at)[:19] + "Z" if key.revoked_at else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


class Progress:
    """A one-line progress bar on a terminal; silent when the output is not one."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label, self.stream = label, stream
        self.enabled = stream.isatty()
        self.total = self.done = 0

    def start(self, total: int) -> None:
        self.total = total
        self._draw()

    def advance(self, count: int) -> None:
        self.done += count
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {share:4.0%} {self.done:,}/{self.total:,} events"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def _filters(args: argparse.Namespace) -> "EventFilter":
    from app.audit.filters import event_filter

    try:
        return event_filter(
            subject_id=args.subject,
            target=args.target,
            purpose=args.purpose,
            state=args.state,
            actor=args.actor,
            source=args.source,
            policy_version=args.policy_version,
            since=args.since,
            until=args.until,
        )
    except AppError as exc:
        raise CommandError(exc.detail) from None


def _instant(value: str) -> datetime:
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {value!r}") from None
    if instant.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone, e.g. {value}Z")
    return instant


def cmd_export(args: argparse.Namespace) -> None:
    from app.audit.export import stream_export
    from app.core.db import Database

    settings = _settings()
    _ready_database(settings)
    filters = _filters(args)
    progress = Progress("export")
    partial = f"{args.output}.partial"

    async def run() -> None:
        database = Database(settings)
        try:
            chunks = stream_export(
                database, filters, args.format, on_total=progress.start, on_rows=progress.advance
            )
            # Into a temporary file first: a failed export never looks like a finished one.
            with open(partial, "w", encoding="utf-8", newline="") as out:  # noqa: ASYNC230
                async for chunk in chunks:
                    out.write(chunk)
            os.replace(partial, args.output)
        finally:
            await database.dispose()

    try:
        asyncio.run(run())
    except (SQLAlchemyError, OSError) as exc:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise CommandError(f"export failed: {_first_line(exc)}") from None
    finally:
        progress.close()
    print(f"wrote {progress.done:,} events to {args.output}")


def cmd_verify(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from app.audit.checkpoints import signing_key
    from app.audit.verify import verify
    from app.core.db import Database
    from app.core.signing import SecretError, load_signing_secret

    settings = _settings()
    _ready_database(settings)
    try:
        key = signing_key(load_signing_secret(settings)).public_key()
    except SecretError as exc:
        raise CommandError(str(exc)) from None
    progress = Progress("verify")

    async def run() -> "Report":
        database = Database(settings)
        try:
            return await verify(database, key, on_total=progress.start, on_events=progress.advance)
        finally:
            await database.dispose()

    try:
        report = asyncio.run(run())
    except (SQLAlchemyError, OSError) as exc:
        raise CommandError(f"verification failed to run: {_first_line(exc)}") from None
    finally:
        progress.close()
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, default=str, indent=2))
    else:
        _print_report(report)
    if not report.ok:
        raise SystemExit(1)


def _print_report(report: "Report") -> None:
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: {report.events:,} events of {report.subjects:,} subjects checked")
    for problem in report.problems:
        print(
            f"  {problem.subject_id} seq {problem.seq}: {problem.problem} "
            f"(expected {problem.expected}, found {problem.found}): {problem.detail}"
        )
    if report.more_problems:
        print(f"  … and {report.more_problems} more")
    for problem in report.current_state:
        print(f"  {problem.subject_id}: {problem.detail}")
    checkpoint = report.checkpoint
    if checkpoint is None:
        print("no signed checkpoint yet")
        return
    print(
        f"checkpoint {checkpoint.id} of {checkpoint.created_at} ({checkpoint.event_count:,} "
        f"events, {checkpoint.checkpoints} in the chain): signature "
        f"{'valid' if checkpoint.signature_valid else 'INVALID'}, heads "
        f"{'match their root' if checkpoint.root_valid else 'do NOT match their root'}"
    )
    for problem_text in checkpoint.chain_problems:
        print(f"  {problem_text}")
    for problem in checkpoint.truncated:
        print(f"  {problem.subject_id} seq {problem.seq}: {problem.problem}: {problem.detail}")


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    from app.auth import service

    settings = _settings()
    _ready_database(settings)

    async def work(session: AsyncSession) -> str:
        key = await service.revoke_key(session, args.name)
        assert key.revoked_at is not None
        return isoformat_z(key.revoked_at)

    revoked_at = _with_session(settings, work)
    print(f"key {args.name!r} is revoked (since {revoked_at}); it no longer works anywhere")


def _first_error(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"])


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_worker(args: argparse.Namespace) -> None:
    """Deliver webhooks until SIGTERM or SIGINT, then finish the round under way and exit."""
    import signal

    from app.webhooks.delivery import run_worker

    settings = _settings()
    _ready_database(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(
            f"Delivering webhooks from {_redacted(settings.database_url)}; stop with Ctrl-C",
            flush=True,
        )
        await run_worker(settings, stop)

    asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consent-ledger",
        description="Consent and permissions ledger. Configuration comes from the environment: "
        "DATABASE_URL, CONSENT_LEDGER_HOST, CONSENT_LEDGER_PORT, CONSENT_LEDGER_WORKERS, "
        "CONSENT_LEDGER_LOG_LEVEL (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="log each request"
    )
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(handler=cmd_migrate)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("--role", required=True, choices=ROLES, help="what the key may do")
    create.add_argument("--name", required=True, help="a unique name, e.g. mobile-backend")
    create.set_defaults(handler=cmd_keys_create)
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.set_defaults(handler=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key at once, on every worker")
    revoke.add_argument("name")
    revoke.set_defaults(handler=cmd_keys_revoke)

    export = commands.add_parser("export", help="export the ledger to a file (ndjson or csv)")
    export.add_argument("--format", choices=("ndjson", "csv"), default="ndjson")
    export.add_argument("--output", "-o", required=True, help="the file to write")
    export.add_argument("--subject", help="only this subject")
    export.add_argument("--target")
    export.add_argument("--purpose")
    export.add_argument("--state", choices=("given", "refused", "withdrawn", "revoked"))
    export.add_argument("--actor")
    export.add_argument("--source")
    export.add_argument("--policy-version")
    export.add_argument("--since", type=_instant, help="recorded at or after (ISO 8601)")
    export.add_argument("--until", type=_instant, help="recorded before (ISO 8601)")
    export.set_defaults(handler=cmd_export)

    verify = commands.add_parser(
        "verify",
        help="recompute every hash chain, check the latest checkpoint; exit 1 on failure",
    )
    verify.add_argument("--json", action="store_true", help="print the full report as JSON")
    verify.set_defaults(handler=cmd_verify)

    worker = commands.add_parser(
        "worker",
        help="deliver webhooks in a process of its own (with CONSENT_LEDGER_WEBHOOK_WORKER=off "
        "on the servers, or beside them: workers never deliver one message at once)",
    )
    worker.set_defaults(handler=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        args.handler(args)
    except CommandError as exc:
        print(f"consent-ledger: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
