"""webhook messages due, by recipient

The deliverer's claim is now made per enabled recipient, so that a paused recipient's backlog is
never read: one index on (recipient_id, status, next_attempt_at) replaces the one on
(status, next_attempt_at) and the one on recipient_id alone (its leading column).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 22:35:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_message', schema=None) as batch_op:
        batch_op.create_index(
            'ix_webhook_message_recipient_due',
            ['recipient_id', 'status', 'next_attempt_at'],
            unique=False,
        )
        batch_op.drop_index('ix_webhook_message_due')
        batch_op.drop_index('ix_webhook_message_recipient_id')


def downgrade() -> None:
    with op.batch_alter_table('webhook_message', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_message_recipient_id', ['recipient_id'], unique=False)
        batch_op.create_index(
            'ix_webhook_message_due', ['status', 'next_attempt_at'], unique=False
        )
        batch_op.drop_index('ix_webhook_message_recipient_due')
