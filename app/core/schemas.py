"""Field types shared by the request and response schemas of every domain."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import parse_qsl

from fastapi import HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    StringConstraints,
    ValidationError,
)

from app.core.types import Instant as Instant  # re-exported: the schemas' type

# Printable text: no C0/C1 control characters (they break logs, CSV exports and the canonical
# encoding of the ledger), and no U+FFFD, which is what invalid UTF-8 in a URL decodes to: two
# different byte strings must never name one subject.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f\ufffd]*$"

SUBJECT_ID_DESCRIPTION = (
    "The app's opaque id for the user (never an email): 1 to 255 characters, no control characters."
)
SubjectIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=NO_CONTROL_CHARACTERS,
        description=SUBJECT_ID_DESCRIPTION,
    ),
]
SubjectId = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROL_CHARACTERS)
]
CatalogueKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ShortText = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL_CHARACTERS)
]

EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(9000, 1, 1, tzinfo=UTC)


def _in_utc(value: datetime) -> datetime:
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the range of instants this service stores") from None
    if not EARLIEST_INSTANT <= value < LATEST_INSTANT:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z")
    return value


# An instant a client sends: it must carry a time zone; it is converted to UTC.
InputInstant = Annotated[AwareDatetime, AfterValidator(_in_utc)]


M = TypeVar("M", bound=BaseModel)


def read_params(values: Any, model: type[M], where: str) -> tuple[M | None, list[Any]]:
    """``values`` (path or query parameters, headers) as ``model``, or the errors FastAPI would
    report for them, their ``loc`` starting with ``where`` (``path``, ``query``, ``header``)."""
    try:
        return model.model_validate(values), []
    except ValidationError as exc:
        return None, [{**error, "loc": (where, *error["loc"])} for error in exc.errors()]


def read_query(request: Request, model: type[M]) -> M:
    """The query string as ``model``, for a route that reads it itself (a hot path): parsed as
    Starlette parses it (the last of repeated names wins, blank values kept), errors as FastAPI
    reports them (a 422 whose ``loc`` starts with ``query``)."""
    pairs = parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)
    query, errors = read_params(dict(pairs), model, "query")
    if errors:
        raise RequestValidationError(errors)
    assert query is not None
    return query


@dataclass(frozen=True)
class Parsed(Generic[M]):
    """A body read by ``read_body``: the model, or the 422 to raise once the caller is known."""

    value: M | None
    error: RequestValidationError | None = None

    @property
    def errors(self) -> list[Any]:
        return list(self.error.errors()) if self.error is not None else []

    def get(self) -> M:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


# What FastAPI answers when a body cannot be read (the client went away before its end).
UNREADABLE_BODY = "There was an error parsing the body"


async def received(request: Request) -> bytes:
    """The request's body, from its ASGI messages, as Starlette's ``Request.body`` reads it but
    without the asynchronous generator that took three times as long (BENCHMARKS.md, step 32).
    A client gone before the end of its body gets FastAPI's 400, not a 500. Read once: it is
    not kept on the request, so only a route that reads its body here alone may use it."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect
            raise HTTPException(status_code=400, detail=UNREADABLE_BODY)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)  # one chunk: that very object, not a copy


async def read_body(request: Request, model: type[M]) -> Parsed[M]:
    """The JSON body as ``model``, for a route that reads it itself, as FastAPI would: a body
    that is not JSON is a 400 at once (before the credential is looked at; see the handler of
    RequestValidationError); anything else wrong with it is a 422 whose ``loc`` starts with
    ``body``, raised by ``Parsed.get`` (after the credential). No body, or a content type other
    than JSON, is such a 422."""
    body = await received(request)
    if not body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        return Parsed(None, RequestValidationError([missing]))
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    json_body = kind == "application" and (subtype == "json" or subtype.endswith("+json"))
    try:
        return Parsed(model.model_validate_json(body) if json_body else model.model_validate(body))
    except ValidationError as exc:
        errors = exc.errors()
    if any(error["type"] == "json_invalid" for error in errors):
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}]
        )
    return Parsed(None, RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]))
