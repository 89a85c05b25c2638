"""When a data-subject request is due: 30 days after receipt by default (the policy: "we will
respond within thirty days"); per jurisdiction in the settings, e.g. the EU's one calendar month,
extendable by up to two more (GDPR art. 12(3))."""

import calendar
import re
from datetime import datetime, timedelta

from app.core.config import EU_MEMBERS, Settings
from app.models import DataSubjectRequest

_PERIOD = re.compile(r"^([0-9]+)([dm])$")
OPEN = ("received", "identity_verified", "in_progress")


def is_overdue(request: DataSubjectRequest, now: datetime) -> bool:
    return request.status in OPEN and request.due_at < now


def add_period(start: datetime, period: str) -> datetime:
    """``30d`` adds days; ``1m`` adds calendar months, landing on the same day of the month or,
    where that month is shorter, on its last day (31 January + 1m = 28 or 29 February)."""
    match = _PERIOD.fullmatch(period)
    if match is None:
        raise ValueError(f"not a period: {period!r} (use e.g. 30d or 1m)")
    amount, unit = int(match[1]), match[2]
    if unit == "d":
        return start + timedelta(days=amount)
    month = start.month - 1 + amount
    year, month = start.year + month // 12, month % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def rule_for(settings: Settings, jurisdiction: str) -> tuple[str, str]:
    """(due, longest extension) for a subject's jurisdiction; EU members follow ``EU``."""
    rules = settings.request_deadlines
    rule = rules.get(jurisdiction) or (rules.get("EU") if jurisdiction in EU_MEMBERS else None)
    rule = rule or rules["default"]
    return rule["due"], rule["max_extension"]


def extended_due(received: datetime, due: str, extension: str) -> datetime:
    """The due time after an extension, counted from receipt: one month plus two more from
    31 January ends on 30 April, not two months after a 28 February due date."""
    if due.endswith("m") and extension.endswith("m"):
        return add_period(received, f"{int(due[:-1]) + int(extension[:-1])}m")
    return add_period(add_period(received, due), extension)
