"""OS permission observations: the latest per (subject, device, permission)."""

from datetime import timedelta

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.catalogue.loader import Catalogue
from app.checks.decision import OS_DENIALS
from app.core.errors import FieldError, InvalidInput
from app.core.types import utcnow
from app.models import PermissionObservation
from app.permissions.schemas import NATIVE_VALUES, PermissionObservationPut
from app.subjects.service import get_subject, lock_subject, refuse_if_cancelled

CLOCK_TOLERANCE = timedelta(minutes=5)


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(
        message, errors=[FieldError(loc=["body", field], msg=message, type="value_error")]
    )


def validate_observation(
    catalogue: Catalogue, target: str, payload: PermissionObservationPut
) -> None:
    entry = catalogue.targets.get(target)
    if entry is None or entry.kind != "permission":
        raise InvalidInput(
            f"{target!r} is not a permission target; GET /v1/catalogue lists them "
            "(their keys start with permission.)",
            errors=[FieldError(loc=["path", "target"], msg="not a permission", type="value_error")],
        )
    natives = NATIVE_VALUES[payload.platform]
    states = natives.get(payload.native_value)
    if states is None:
        raise _invalid(
            "native_value",
            f"{payload.native_value!r} is not a {payload.platform} permission status; "
            f"expected one of {', '.join(natives)}",
        )
    if payload.state not in states:
        raise _invalid(
            "state",
            f"{payload.platform} {payload.native_value} cannot mean {payload.state!r}; "
            f"it means {' or '.join(sorted(states))}",
        )
    location = target == "permission.location"
    for field in ("accuracy", "scope"):
        if getattr(payload, field) is not None and not location:
            raise _invalid(field, f"{field} applies to permission.location only")
    expected_scope = {"authorizedAlways": "background", "authorizedWhenInUse": "foreground"}.get(
        payload.native_value
    )
    if payload.platform == "ios" and payload.scope not in (None, expected_scope) and expected_scope:
        raise _invalid("scope", f"ios {payload.native_value} means scope {expected_scope}")
    if payload.observed_at is not None and payload.observed_at > utcnow() + CLOCK_TOLERANCE:
        raise _invalid("observed_at", "observed_at is in the future")


async def record_observation(
    session: AsyncSession,
    subject_id: str,
    device_id: str,
    target: str,
    payload: PermissionObservationPut,
) -> PermissionObservation:
    """Keep the newest observation; an older one arriving late changes nothing."""
    subject = await lock_subject(session, subject_id)
    refuse_if_cancelled(subject, "no OS observation is recorded for it")
    now = utcnow()
    observed_at = payload.observed_at or now
    row = await session.get(PermissionObservation, (subject_id, device_id, target))
    if row is not None and observed_at < row.observed_at:
        return row
    denied_at = observed_at if payload.state in OS_DENIALS else None
    values = payload.model_dump(exclude={"observed_at"})
    if row is None:
        row = PermissionObservation(
            subject_id=subject_id,
            device_id=device_id,
            target_key=target,
            **values,
            observed_at=observed_at,
            recorded_at=now,
            last_denied_at=denied_at,
        )
    else:
        for name, value in values.items():
            setattr(row, name, value)
        row.observed_at, row.recorded_at = observed_at, now
        row.last_denied_at = denied_at or row.last_denied_at
    session.add(row)
    await session.flush()
    return row


async def list_observations(
    session: AsyncSession, subject_id: str, device_id: str
) -> list[PermissionObservation]:
    await get_subject(session, subject_id)
    statement = (
        select(PermissionObservation)
        .where(
            PermissionObservation.subject_id == subject_id,
            PermissionObservation.device_id == device_id,
        )
        .order_by(col(PermissionObservation.target_key))
    )
    return list((await session.exec(statement)).all())
