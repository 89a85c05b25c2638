"""Every table. Import this package to register them all on the metadata."""

from app.models.api_key import ApiKey
from app.models.base import metadata
from app.models.catalogue import BusinessFunction, FunctionNeed, Purpose, PurposeTarget, Target
from app.models.checkpoint import Checkpoint, CheckpointHead
from app.models.consent import Consent, ConsentEvent
from app.models.guardian import GuardianConsent
from app.models.idempotency import IdempotencyRecord
from app.models.permission import PermissionObservation
from app.models.policy import PolicyVersion
from app.models.recipient import Recipient, WebhookAttempt, WebhookMessage
from app.models.request import DataSubjectRequest, RequestEvent
from app.models.subject import GENESIS_HASH, Subject

__all__ = [
    "GENESIS_HASH",
    "ApiKey",
    "BusinessFunction",
    "Checkpoint",
    "CheckpointHead",
    "Consent",
    "ConsentEvent",
    "DataSubjectRequest",
    "FunctionNeed",
    "GuardianConsent",
    "IdempotencyRecord",
    "PermissionObservation",
    "PolicyVersion",
    "Purpose",
    "PurposeTarget",
    "Recipient",
    "RequestEvent",
    "Subject",
    "Target",
    "WebhookAttempt",
    "WebhookMessage",
    "metadata",
]
