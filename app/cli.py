"""The ``consent-ledger`` command."""

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app.core.config import Settings, get_settings


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        if name != "DATABASE_URL":
            name = "CONSENT_LEDGER_" + name
        raise CommandError(f"invalid setting {name}: {error['msg']}") from None


def _migrate(settings: Settings) -> None:
    from sqlalchemy.exc import SQLAlchemyError

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


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = _settings()
    if settings.is_sqlite:
        _migrate(settings)  # the embedded default just works on first start
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


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
