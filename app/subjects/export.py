"""Everything held about one subject, as one document: the answer to an access request."""

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.consents.events import event_public
from app.consents.service import list_consents
from app.core.config import Settings
from app.core.types import utcnow
from app.models import (
    ConsentEvent,
    DataSubjectRequest,
    GuardianConsent,
    PermissionObservation,
    RequestEvent,
)
from app.permissions.schemas import PermissionObservationPublic
from app.requests.deadlines import is_overdue
from app.requests.schemas import RequestEventPublic, RequestPublic
from app.subjects.age import is_child
from app.subjects.schemas import (
    ExportedRequest,
    GuardianConsentPublic,
    SubjectExport,
    SubjectPublic,
)
from app.subjects.service import get_subject


async def export_subject(
    session: AsyncSession, catalogue: Catalogue, settings: Settings, subject_id: str
) -> SubjectExport:
    """Read in the caller's transaction; on PostgreSQL give it a repeatable-read snapshot (or
    hold the subject's lock) for the parts to agree with each other."""
    now = utcnow()
    subject = await get_subject(session, subject_id)
    consents = await list_consents(session, catalogue, settings, subject_id, None)
    events = await session.exec(
        select(ConsentEvent)
        .where(ConsentEvent.subject_id == subject_id)
        .order_by(col(ConsentEvent.seq))
    )
    observations = await session.exec(
        select(PermissionObservation)
        .where(PermissionObservation.subject_id == subject_id)
        .order_by(col(PermissionObservation.device_id), col(PermissionObservation.target_key))
    )
    guardians = await session.exec(
        select(GuardianConsent)
        .where(GuardianConsent.subject_id == subject_id)
        .order_by(col(GuardianConsent.recorded_at))
    )
    requests = list(
        (
            await session.exec(
                select(DataSubjectRequest)
                .where(DataSubjectRequest.subject_id == subject_id)
                .order_by(col(DataSubjectRequest.id))
            )
        ).all()
    )
    logs: dict[object, list[RequestEventPublic]] = {r.id: [] for r in requests}
    if requests:
        rows = await session.exec(
            select(RequestEvent)
            .where(col(RequestEvent.request_id).in_(list(logs)))
            .order_by(col(RequestEvent.id))
        )
        for row in rows:
            logs[row.request_id].append(
                RequestEventPublic.model_validate(row, from_attributes=True)
            )
    return SubjectExport(
        subject_id=subject_id,
        exported_at=now,
        subject=SubjectPublic.model_validate(
            {**subject.model_dump(), "child": is_child(subject, settings, now)}
        ),
        consents=consents.items,
        events=[event_public(e) for e in events],
        permissions=[
            PermissionObservationPublic.model_validate({**o.model_dump(), "target": o.target_key})
            for o in observations
        ],
        guardian_consents=[
            GuardianConsentPublic.model_validate(g, from_attributes=True) for g in guardians
        ],
        requests=[
            ExportedRequest(
                **RequestPublic.model_validate(
                    {
                        **r.model_dump(exclude={"export"}),
                        "overdue": is_overdue(r, now),
                        "export_attached": r.export is not None,
                    }
                ).model_dump(),
                events=logs[r.id],
            )
            for r in requests
        ],
    )
