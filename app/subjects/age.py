"""Who is a child. Ages are lower bounds: when only a birth year or a stated age is known, the
subject is taken to be as young as they could be, so no child is ever treated as an adult."""

from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

from app.core.config import Settings


class AgeFacts(Protocol):
    """What is known of a subject's age: a Subject row, or the check's hot-path row."""

    @property
    def jurisdiction(self) -> str: ...
    @property
    def birth_year(self) -> int | None: ...
    @property
    def birth_date(self) -> date | None: ...
    @property
    def age(self) -> int | None: ...
    @property
    def age_stated_at(self) -> datetime | None: ...
    @property
    def child_until(self) -> date | None: ...


def _years_between(start: date, end: date) -> int:
    return end.year - start.year - ((end.month, end.day) < (start.month, start.day))


def minimum_age(subject: AgeFacts, at: datetime) -> int | None:
    today = at.astimezone(UTC).date()
    if subject.birth_date is not None:
        return _years_between(subject.birth_date, today)
    if subject.birth_year is not None:
        return today.year - subject.birth_year - 1  # the birthday may not have come yet
    if subject.age is not None and subject.age_stated_at is not None:
        stated = subject.age_stated_at.date()
        if today >= stated:
            return subject.age + _years_between(stated, today)
        return max(0, subject.age - _years_between(today, stated) - 1)  # before it was stated
    return None


def is_child(subject: AgeFacts, settings: Settings, at: datetime) -> bool:
    age = minimum_age(subject, at)
    if age is None:  # nothing stated, or erased: a child's erasure leaves child_until behind
        return subject.child_until is not None and at.astimezone(UTC).date() < subject.child_until
    return age < settings.child_age(subject.jurisdiction)


def child_until(subject: AgeFacts, settings: Settings, at: datetime) -> date | None:
    """The first day on which a subject who is a child at ``at`` is surely no longer one: what is
    kept of a child whose age attributes are erased. (A day-by-day walk: at most 21 years of
    days, and only on erasure.)"""
    day = at.astimezone(UTC).date()
    if not is_child(subject, settings, at):
        return None
    while is_child(subject, settings, datetime.combine(day, time(), UTC)):
        day += timedelta(days=1)
    return day
