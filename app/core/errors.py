"""Every error as RFC 9457 ``application/problem+json``.

Raise an ``AppError`` subclass from a service; the handlers here turn it, FastAPI's validation
errors and Starlette's HTTP errors into problem documents. Anything else is a bug: it is logged
and answered with a 500 problem that leaks nothing.
"""

import logging
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("consent_ledger")

PROBLEM_MEDIA_TYPE = "application/problem+json"
# PostgreSQL errors that say "busy, try again", not "wrong": serialization failure, deadlock,
# lock not available, query cancelled (statement or lock timeout), too many connections.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "53300"})
TYPE_PREFIX = "urn:consent-ledger:problem:"


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457)."""

    type: str = Field(examples=[TYPE_PREFIX + "validation-error"])
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldError] | None = None


class AppError(Exception):
    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str, *, errors: list[FieldError] | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.extra = extra


class NotFound(AppError):
    status = 404
    slug = "not-found"
    title = "Not found"


class SubjectNotFound(NotFound):
    """Also what a subject token gets for any subject but its own."""

    slug = "subject-not-found"
    title = "Subject not found"


class Conflict(AppError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Unauthenticated(AppError):
    status = 401
    slug = "unauthenticated"
    title = "Unauthenticated"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": 'Bearer realm="consent-ledger"'}


class Forbidden(AppError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class InvalidInput(AppError):
    status = 422
    slug = "validation-error"
    title = "Invalid input"


class ServiceUnavailable(AppError):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """What the driver-level hot path raises for what the ORM's errors answer the same way."""

    slug = "database-unavailable"
    title = "Database unavailable"
    headers = {"Retry-After": "1"}  # noqa: RUF012 (read-only, like the other headers)


def problem_response(
    request: Request,
    *,
    status: int,
    type_: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = [e.model_dump() for e in errors]
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route that can raise these errors."""
    out: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        entry = out.setdefault(
            error.status,
            {"model": Problem, "description": error.title, "content": {PROBLEM_MEDIA_TYPE: {}}},
        )
        if error.title not in entry["description"]:
            entry["description"] += f"; {error.title}"
    return out


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    out = []
    for error in exc.errors():
        loc = [part for part in error.get("loc", ()) if isinstance(part, str | int)]
        out.append(FieldError(loc=loc, msg=str(error.get("msg", "")), type=str(error.get("type"))))
    return out


def _describe(errors: list[FieldError]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.loc)
        parts.append(f"{where}: {error.msg}" if where else error.msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return problem_response(
            request,
            status=exc.status,
            type_=TYPE_PREFIX + exc.slug,
            title=exc.title,
            detail=exc.detail,
            errors=exc.errors,
            extra=exc.extra,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        if any(e.type == "json_invalid" for e in errors):
            return problem_response(
                request,
                status=400,
                type_=TYPE_PREFIX + "malformed-json",
                title="Malformed JSON",
                detail="The request body is not valid JSON: " + _describe(errors),
                errors=errors,
            )
        return problem_response(
            request,
            status=422,
            type_=TYPE_PREFIX + "validation-error",
            title="Invalid input",
            detail=_describe(errors),
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {request.url.path}; see /docs for the API."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return problem_response(
            request,
            status=exc.status_code,
            type_="about:blank",
            title=_reason_phrase(exc.status_code),
            detail=detail,
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(OSError)  # asyncpg raises the socket's own error when it cannot connect
    @app.exception_handler(PoolTimeoutError)  # every connection busy for pool_timeout seconds
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.error("database unavailable: %s", getattr(exc, "orig", exc))
        return problem_response(
            request,
            status=503,
            type_=TYPE_PREFIX + "database-unavailable",
            title="Database unavailable",
            detail="The database could not be reached or is busy; retry shortly.",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # A pooled connection the server dropped (a restart, a fail-over): SQLAlchemy has thrown
        # it away, and the retry gets a fresh one.
        if exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return await _database_unavailable(request, exc)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request,
            status=500,
            type_="about:blank",
            title="Internal Server Error",
            detail="An unexpected error occurred; it has been logged.",
        )


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
