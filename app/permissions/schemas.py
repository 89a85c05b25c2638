from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.core.schemas import NO_CONTROL_CHARACTERS, InputInstant, Instant

Platform = Literal["android", "ios"]
OsState = Literal[
    "not_determined",
    "granted",
    "granted_limited",
    "granted_once",
    "denied",
    "denied_permanent",
    "restricted",
    "provisional",
]
DeviceId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)
]

# What each platform's permission APIs answer, and the normalised states each answer can mean.
# Android: ContextCompat.checkSelfPermission gives GRANTED or DENIED; whether a denial is
# permanent, a grant one-time (Android 11+) or limited to selected photos (Android 14+) comes from
# context the app knows. iOS: the authorizationStatus enums of CoreLocation, Photos, AVFoundation,
# Contacts and UserNotifications; iOS never shows a permission dialog twice, so `denied` there is
# always permanent.
NATIVE_VALUES: dict[str, dict[str, frozenset[str]]] = {
    "android": {
        "PERMISSION_GRANTED": frozenset({"granted", "granted_once", "granted_limited"}),
        "PERMISSION_DENIED": frozenset({"not_determined", "denied", "denied_permanent"}),
    },
    "ios": {
        "notDetermined": frozenset({"not_determined"}),
        "restricted": frozenset({"restricted"}),
        "denied": frozenset({"denied_permanent"}),
        "authorized": frozenset({"granted", "granted_once"}),
        "authorizedAlways": frozenset({"granted"}),
        "authorizedWhenInUse": frozenset({"granted", "granted_once"}),
        "limited": frozenset({"granted_limited"}),
        "provisional": frozenset({"provisional"}),
        "ephemeral": frozenset({"granted_once"}),
    },
}


class PermissionObservationPut(BaseModel):
    """What the OS reported for one permission on one device."""

    model_config = ConfigDict(extra="forbid")

    platform: Platform
    native_value: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="What the platform API returned: PERMISSION_GRANTED, authorizedWhenInUse…"
    )
    state: OsState
    accuracy: Literal["precise", "approximate"] | None = Field(
        default=None, description="Location only."
    )
    scope: Literal["foreground", "background"] | None = Field(
        default=None, description="Location only: while in use, or always."
    )
    observed_at: InputInstant | None = Field(default=None, description="Default: now.")


class PermissionObservationPublic(BaseModel):
    subject_id: str
    device_id: str
    target: str
    platform: str
    native_value: str
    state: str
    accuracy: str | None
    scope: str | None
    observed_at: Instant
    recorded_at: Instant
    last_denied_at: Instant | None


class PermissionObservationList(BaseModel):
    items: list[PermissionObservationPublic]
    next_cursor: None = None
