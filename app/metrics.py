"""``GET /metrics``: Prometheus gauges read from the database, so every worker and instance
reports the same figures (no per-process counters to add up)."""

from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import case
from sqlmodel import col, func, select

from app.core.db import ReadSessionDep
from app.core.security import Principal, Scope, requires
from app.core.types import utcnow
from app.models import DataSubjectRequest, WebhookMessage
from app.requests.deadlines import OPEN
from app.requests.schemas import RequestType
from app.webhooks.outbox import EVENT_TYPES

router = APIRouter(tags=["health"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TYPES = RequestType.__args__  # type: ignore[attr-defined]
DELIVERY_STATUSES = ("pending", "delivered", "failed")


def _gauge(name: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]) -> str:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
async def metrics(
    session: ReadSessionDep, _principal: Annotated[Principal, requires(Scope.METRICS_READ)]
) -> PlainTextResponse:
    """Open and overdue data-subject requests by type; webhook messages by status and type, and
    the age of the oldest pending one."""
    now = utcnow()
    request = DataSubjectRequest
    async with session.begin():
        late = case((col(request.due_at) < now, 1), else_=0)
        open_rows = await session.exec(
            select(request.type, func.count(), func.sum(late))
            .where(col(request.status).in_(OPEN))
            .group_by(request.type)
        )
        open_by_type = dict.fromkeys(REQUEST_TYPES, 0)
        overdue_by_type = dict.fromkeys(REQUEST_TYPES, 0)
        for type_, count, overdue in open_rows:
            open_by_type[type_], overdue_by_type[type_] = count, overdue or 0
        message_rows = await session.exec(
            select(WebhookMessage.status, WebhookMessage.type, func.count()).group_by(
                WebhookMessage.status, WebhookMessage.type
            )
        )
        messages = {(s, t): 0 for s in DELIVERY_STATUSES for t in EVENT_TYPES}
        for status, type_, count in message_rows:
            messages[(status, type_)] = count
        oldest = (
            await session.exec(
                select(func.min(WebhookMessage.created_at)).where(
                    WebhookMessage.status == "pending"
                )
            )
        ).one()
    body = "".join(
        (
            _gauge(
                "consent_ledger_requests_open",
                "Data-subject requests not yet closed.",
                (({"type": t}, n) for t, n in open_by_type.items()),
            ),
            _gauge(
                "consent_ledger_requests_overdue",
                "Open data-subject requests past their due time.",
                (({"type": t}, n) for t, n in overdue_by_type.items()),
            ),
            _gauge(
                "consent_ledger_webhook_messages",
                "Webhook messages in the outbox, by status and type.",
                (({"status": s, "type": t}, n) for (s, t), n in messages.items()),
            ),
            _gauge(
                "consent_ledger_webhook_oldest_pending_seconds",
                "Age of the oldest undelivered webhook message; 0 when none waits.",
                [({}, (now - oldest).total_seconds() if oldest is not None else 0.0)],
            ),
        )
    )
    return PlainTextResponse(body, media_type=CONTENT_TYPE)
