"""The filters every audit view of the ledger shares: query, export and statistics."""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from sqlmodel import col

from app.core.errors import FieldError, InvalidInput
from app.core.schemas import NO_CONTROL_CHARACTERS, InputInstant
from app.models import ConsentEvent

Text = Annotated[str | None, Query(min_length=1, max_length=255, pattern=NO_CONTROL_CHARACTERS)]
Key = Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_CONTROL_CHARACTERS)]


@dataclass(frozen=True)
class EventFilter:
    subject_id: str | None = None
    target: str | None = None
    purpose: str | None = None
    state: str | None = None
    actor: str | None = None
    source: str | None = None
    policy_version: str | None = None
    since: datetime | None = None  # recorded_at >= since
    until: datetime | None = None  # recorded_at < until

    def conditions(self) -> list[Any]:
        equal = {
            ConsentEvent.subject_id: self.subject_id,
            ConsentEvent.target_key: self.target,
            ConsentEvent.purpose_key: self.purpose,
            ConsentEvent.state: self.state,
            ConsentEvent.actor: self.actor,
            ConsentEvent.source: self.source,
            ConsentEvent.policy_version: self.policy_version,
        }
        out = [col(column) == value for column, value in equal.items() if value is not None]
        if self.since is not None:
            out.append(col(ConsentEvent.recorded_at) >= self.since)
        if self.until is not None:
            out.append(col(ConsentEvent.recorded_at) < self.until)
        return out


def event_filter(
    subject_id: Text = None,
    target: Key = None,
    purpose: Key = None,
    state: Annotated[Literal["given", "refused", "withdrawn", "revoked"] | None, Query()] = None,
    actor: Key = None,
    source: Key = None,
    policy_version: Key = None,
    since: Annotated[InputInstant | None, Query(description="recorded_at at or after")] = None,
    until: Annotated[InputInstant | None, Query(description="recorded_at before")] = None,
) -> EventFilter:
    if since is not None and until is not None and until <= since:
        raise InvalidInput(
            "until must be after since",
            errors=[FieldError(loc=["query", "until"], msg="not after since", type="range")],
        )
    return EventFilter(
        subject_id, target, purpose, state, actor, source, policy_version, since, until
    )


EventFilterDep = Annotated[EventFilter, Depends(event_filter)]
