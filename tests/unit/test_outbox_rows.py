"""The outbox's message rows are written without the ORM by the consent writer: they must hold
every column of the model, as the model would hold them."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from app.consents.ledger import NewEvent
from app.models import WebhookMessage
from app.webhooks.outbox import stop_messages


@dataclass
class _Recipient:
    id: uuid.UUID
    targets: list[str] | None
    purposes: list[str] | None


def test_a_stop_message_row_has_every_column_of_the_model() -> None:
    at = datetime(2026, 11, 25, tzinfo=UTC)
    event = NewEvent(
        uuid.uuid4(), "s-1", 3, "gender", "service_improvement", "withdrawn", "given", "app",
        "mobile", "api", "2022-02", at, None, {}, None, None, None, "0" * 64, "1" * 64,
    )  # fmt: skip
    [row] = stop_messages([event], [_Recipient(uuid.uuid4(), None, ["service_improvement"])])
    columns = {c.name for c in WebhookMessage.__table__.columns}  # type: ignore[attr-defined]
    assert set(row) == columns
    model = WebhookMessage(**row)
    assert {c: getattr(model, c) for c in columns} == row
    assert row["payload"]["data"]["event_id"] == str(event.id)
    assert stop_messages([event], []) == []
