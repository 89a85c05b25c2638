"""Field types shared by the request and response schemas of every domain."""

from datetime import datetime
from typing import Annotated

from fastapi import Path
from pydantic import AwareDatetime, PlainSerializer, StringConstraints

from app.core.types import isoformat_z

# Printable text: no C0/C1 control characters (they break logs, CSV exports and the canonical
# encoding of the ledger).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]*$"

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
InputInstant = AwareDatetime
