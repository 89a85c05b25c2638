"""Field types shared by the request and response schemas of every domain."""

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    PlainSerializer,
    StringConstraints,
    ValidationError,
)

from app.core.types import isoformat_z

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

# Every instant the API returns has the one form the ledger hashes: 2026-01-31T12:00:00.000000Z.
Instant = Annotated[datetime, PlainSerializer(isoformat_z, return_type=str)]
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


def read_query(request: Request, model: type[M]) -> M:
    """The query string as ``model``, for a route that reads it itself (a hot path): parsed as
    Starlette parses it (the last of repeated names wins, blank values kept), errors as FastAPI
    reports them (a 422 whose ``loc`` starts with ``query``)."""
    pairs = parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)
    try:
        return model.model_validate(dict(pairs))
    except ValidationError as exc:
        errors = [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI ``parameters`` of a query read with ``read_query``."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        field = {k: v for k, v in field.items() if k != "title"}
        description = field.pop("description", None)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": field}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters
