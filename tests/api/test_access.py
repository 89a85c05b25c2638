"""The access matrix: every route of the application, for every kind of caller: the status.

The routes come from the application's own route table; a route missing from ``MATRIX`` fails
``test_every_route_is_in_the_access_matrix``, so nobody can add a route without deciding who
may call it.
"""

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from app.core.config import Settings
from app.main import create_app
from tests.factories import KEYS, OPTIONAL, auth

CALLERS = ("none", "bad", "revoked", "app", "auditor", "officer", "admin", "own", "other")
STAFF_READERS = frozenset({"app", "auditor", "officer", "admin"})
AUDITORS = frozenset({"auditor", "officer", "admin"})
STAFF_MANAGERS = frozenset({"officer", "admin"})
# What a subject token carries (for its own subject only).
TOKEN_SCOPES = frozenset(
    {"catalogue:read", "subjects:read", "subjects:cancel", "subjects:export", "consents:read",
     "consents:write", "requests:create", "requests:read"}
)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """The scope a route checks, who may call it (``allowed``; ``None`` when the route is public)
    and what success looks like. ``own`` is a subject token for the subject in the path,
    ``other`` one for another subject."""

    scope: str | None  # what the route checks; None: a public route
    allowed: frozenset[str] | None = None
    ok: int = 200
    body: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    path: dict[str, str] = field(default_factory=dict)
    # A data-subject request in this status is made afresh for each caller (its {request_id}).
    request_in: str | None = None
    # A subject (and its tokens) made afresh for each caller: the route changes it for good.
    fresh_subject: bool = False


def _allowed(*callers: str) -> frozenset[str]:
    return frozenset(callers)


CONSENT = {"state": "given"}
MATRIX: dict[tuple[str, str], Entry] = {
    ("GET", "/healthz"): Entry(None),
    ("GET", "/readyz"): Entry(None),
    ("GET", "/openapi.json"): Entry(None),
    ("GET", "/docs"): Entry(None),
    ("GET", "/docs/oauth2-redirect"): Entry(None),
    ("GET", "/redoc"): Entry(None),
    ("GET", "/v1/catalogue"): Entry("catalogue:read", STAFF_READERS | {"own", "other"}),
    ("PUT", "/v1/subjects/{subject_id}"): Entry(
        "subjects:write", _allowed("app", "officer", "admin"), body={"jurisdiction": "CN"}
    ),
    ("GET", "/v1/subjects/{subject_id}"): Entry("subjects:read", STAFF_READERS | {"own"}),
    ("GET", "/v1/subjects/{subject_id}/consents"): Entry("consents:read", STAFF_READERS | {"own"}),
    ("PUT", "/v1/subjects/{subject_id}/consents/{target}/{purpose}"): Entry(
        "consents:write", _allowed("app", "admin", "own"), body=CONSENT
    ),
    ("POST", "/v1/subjects/{subject_id}/consents"): Entry(
        "consents:write",
        _allowed("app", "admin", "own"),
        body={"changes": [{"target": OPTIONAL[0], "purpose": OPTIONAL[1], "state": "given"}]},
    ),
    ("GET", "/v1/subjects/{subject_id}/events"): Entry("consents:read", STAFF_READERS | {"own"}),
    ("POST", "/v1/subjects/{subject_id}/tokens"): Entry(
        "tokens:create", _allowed("app", "admin"), ok=201
    ),
    ("POST", "/v1/checks"): Entry(
        "checks:run",
        _allowed("app", "admin"),
        body={
            "subject_id": "{subject_id}",
            "items": [dict(zip(("target", "purpose"), OPTIONAL, strict=True))],
        },
    ),
    ("GET", "/v1/checks"): Entry(
        "checks:run",
        _allowed("app", "admin"),
        params={"subject_id": "{subject_id}", "target": OPTIONAL[0], "purpose": OPTIONAL[1]},
    ),
    ("GET", "/v1/policies"): Entry("catalogue:read", STAFF_READERS | {"own", "other"}),
    ("GET", "/v1/policies/{version}"): Entry("catalogue:read", STAFF_READERS | {"own", "other"}),
    ("POST", "/v1/policies"): Entry(
        "policies:write",
        _allowed("officer", "admin"),
        ok=201,
        body={"text": "Policy text.", "summary": "Typos."},
    ),
    ("POST", "/v1/subjects/{subject_id}/guardian-consents"): Entry(
        "guardians:write",
        _allowed("app", "admin"),
        ok=201,
        body={
            "guardian_ref": "g-1",
            "relationship": "parent",
            "verification_method": "id_document",
            "evidence_ref": "vault://kyc/1",
            "verifier": "kyc-service",
        },
    ),
    ("GET", "/v1/subjects/{subject_id}/guardian-consents"): Entry(
        "consents:read", STAFF_READERS | {"own"}
    ),
    ("PUT", "/v1/subjects/{subject_id}/devices/{device_id}/permissions/{target}"): Entry(
        "permissions:write",
        _allowed("app", "admin"),
        body={"platform": "android", "native_value": "PERMISSION_GRANTED", "state": "granted"},
        path={"target": "permission.camera"},
    ),
    ("GET", "/v1/subjects/{subject_id}/devices/{device_id}/permissions"): Entry(
        "consents:read", STAFF_READERS | {"own"}
    ),
    ("GET", "/v1/audit/events"): Entry("audit:read", AUDITORS),
    ("GET", "/v1/audit/consents"): Entry(
        "audit:read",
        AUDITORS,
        params={"as_of": "2030-01-01T00:00:00Z", "target": OPTIONAL[0], "purpose": OPTIONAL[1]},
    ),
    ("GET", "/v1/audit/export"): Entry("audit:read", AUDITORS),
    ("GET", "/v1/audit/verify"): Entry("audit:read", AUDITORS),
    ("GET", "/v1/audit/checkpoints"): Entry("audit:read", AUDITORS),
    ("POST", "/v1/audit/checkpoints"): Entry(
        "audit:checkpoint", _allowed("officer", "admin"), ok=201
    ),
    ("GET", "/v1/audit/public-key"): Entry("audit:read", AUDITORS),
    ("GET", "/v1/audit/checkpoints/{checkpoint_id}/heads"): Entry("audit:read", AUDITORS),
    ("GET", "/v1/audit/stats"): Entry("audit:read", AUDITORS),
    ("POST", "/v1/subjects/{subject_id}/requests"): Entry(
        "requests:create", _allowed("officer", "admin", "own"), ok=201, body={"type": "access"}
    ),
    ("GET", "/v1/subjects/{subject_id}/requests"): Entry("requests:read", AUDITORS | {"own"}),
    ("GET", "/v1/requests"): Entry("requests:read", AUDITORS),
    ("GET", "/v1/requests/{request_id}"): Entry("requests:read", AUDITORS, request_in="received"),
    ("GET", "/v1/requests/{request_id}/events"): Entry(
        "requests:read", AUDITORS, request_in="received"
    ),
    ("POST", "/v1/requests/{request_id}/identity-verification"): Entry(
        "requests:manage",
        STAFF_MANAGERS,
        body={"method": "account_login", "verified_by": "dpo"},
        request_in="received",
    ),
    ("POST", "/v1/requests/{request_id}/start"): Entry(
        "requests:manage", STAFF_MANAGERS, request_in="identity_verified"
    ),
    ("POST", "/v1/requests/{request_id}/completion"): Entry(
        "requests:manage", STAFF_MANAGERS, body={"resolution": "Sent."}, request_in="in_progress"
    ),
    ("POST", "/v1/requests/{request_id}/refusal"): Entry(
        "requests:manage",
        STAFF_MANAGERS,
        body={"ground": "trade_secrets", "reason": "It would reveal the scoring model."},
        request_in="received",
    ),
    ("POST", "/v1/requests/{request_id}/extension"): Entry(
        "requests:manage",
        STAFF_MANAGERS,
        body={"period": "1m", "reason": "Many requests this month."},
        request_in="received",
    ),
    ("POST", "/v1/requests/{request_id}/cancellation"): Entry(
        "requests:manage", STAFF_MANAGERS, body={}, request_in="received"
    ),
    ("POST", "/v1/subjects/{subject_id}/cancellation"): Entry(
        "subjects:cancel", _allowed("app", "officer", "admin", "own"), body={}, fresh_subject=True
    ),
    ("GET", "/v1/subjects/{subject_id}/export"): Entry(
        "subjects:export", _allowed("app", "officer", "admin", "own")
    ),
    ("GET", "/v1/requests/{request_id}/export"): Entry(
        "requests:manage", STAFF_MANAGERS, request_in="completed"
    ),
    ("POST", "/v1/recipients"): Entry(
        "recipients:manage",
        STAFF_MANAGERS,
        ok=201,
        body={"kind": "processor", "url": "https://processor.example/hooks"},
    ),
    ("GET", "/v1/recipients"): Entry("recipients:read", AUDITORS),
    ("GET", "/v1/recipients/{recipient_id}"): Entry("recipients:read", AUDITORS),
    ("PATCH", "/v1/recipients/{recipient_id}"): Entry(
        "recipients:manage", STAFF_MANAGERS, body={"kind": "third_party"}
    ),
    ("POST", "/v1/recipients/{recipient_id}/secret-rotation"): Entry(
        "recipients:manage", STAFF_MANAGERS
    ),
    ("POST", "/v1/recipients/{recipient_id}/disable"): Entry("recipients:manage", STAFF_MANAGERS),
    ("POST", "/v1/recipients/{recipient_id}/enable"): Entry("recipients:manage", STAFF_MANAGERS),
    ("GET", "/v1/recipients/{recipient_id}/deliveries"): Entry("recipients:read", AUDITORS),
    ("GET", "/v1/recipients/{recipient_id}/attempts"): Entry("recipients:read", AUDITORS),
    # No such message: the callers allowed get as far as looking it up (its 404).
    ("POST", "/v1/recipients/{recipient_id}/deliveries/{message_id}/replay"): Entry(
        "recipients:manage", STAFF_MANAGERS, ok=404
    ),
    ("GET", "/metrics"): Entry("metrics:read", AUDITORS),
    ("GET", "/v1/keys"): Entry("keys:manage", _allowed("admin")),
    ("POST", "/v1/keys"): Entry("keys:manage", _allowed("admin"), ok=201, body={"role": "auditor"}),
    ("POST", "/v1/keys/{name}/revocation"): Entry("keys:manage", _allowed("admin")),
}


def _route_table() -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="sqlite:///unused.db"))
    return {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        for method in getattr(context, "methods", None) or ()
        if method != "HEAD"
    }


def test_every_route_is_in_the_access_matrix() -> None:
    routes = _route_table()
    assert routes - MATRIX.keys() == set(), "routes with no entry in the access matrix"
    assert MATRIX.keys() - routes == set(), "matrix entries for routes that no longer exist"


def expected_status(entry: Entry, caller: str) -> int:
    if entry.allowed is None or caller in entry.allowed:
        return entry.ok
    if caller in ("none", "bad", "revoked"):
        return 401
    if caller == "other" and "own" in entry.allowed:
        return 404  # another subject's data looks like no data at all
    return 403


@pytest.fixture
async def credentials(client: httpx.AsyncClient, subject_id: str) -> dict[str, str | None]:
    """One credential per kind of caller, for ``subject_id``."""
    admin = {"Authorization": f"Bearer {KEYS['admin']}"}
    created = await client.post(
        "/v1/keys", json={"name": "to-revoke", "role": "app"}, headers=admin
    )
    assert created.status_code == 201, created.text
    revoked = created.json()["key"]
    assert (await client.post("/v1/keys/to-revoke/revocation", headers=admin)).status_code == 200
    assert (
        await client.post("/v1/keys", json={"name": "victim", "role": "auditor"}, headers=admin)
    ).status_code == 201
    checkpoint = await client.post("/v1/audit/checkpoints", headers=admin)
    assert checkpoint.status_code == 201, checkpoint.text
    recipient = await client.post(
        "/v1/recipients",
        json={"name": "matrix", "kind": "processor", "url": "https://processor.example/hooks"},
        headers=admin,
    )
    assert recipient.status_code == 201, recipient.text
    tokens = {
        "checkpoint_id": checkpoint.json()["id"],
        "recipient_id": recipient.json()["id"],
        **await subject_tokens(client, subject_id),
    }
    return {
        "none": None,
        "bad": "clk_" + "x" * 43,
        "revoked": revoked,
        **{role: KEYS[role] for role in ("app", "auditor", "officer", "admin")},
        **tokens,
    }


async def subject_tokens(client: httpx.AsyncClient, subject_id: str) -> dict[str, str]:
    """The subject made, a token for it ("own") and one for another subject ("other")."""
    tokens = {}
    for who, subject in (("own", subject_id), ("other", f"{subject_id}-other")):
        response = await client.post(f"/v1/subjects/{subject}/tokens", headers=auth(KEYS["app"]))
        assert response.status_code == 201, response.text
        tokens[who] = response.json()["token"]
    response = await client.put(f"/v1/subjects/{subject_id}", json={}, headers=auth(KEYS["app"]))
    assert response.status_code in (200, 201), response.text
    return tokens


async def fresh_request(client: httpx.AsyncClient, status: str) -> str:
    """A request of an EU subject of its own (so it may be extended), brought to ``status``."""
    officer = auth(KEYS["officer"])
    subject = f"matrix-{uuid.uuid4().hex[:8]}"
    await client.put(f"/v1/subjects/{subject}", json={"jurisdiction": "EU"}, headers=officer)
    created = await client.post(
        f"/v1/subjects/{subject}/requests", json={"type": "access"}, headers=officer
    )
    request_id: str = created.json()["id"]
    steps = {
        "identity_verified": ["identity-verification"],
        "in_progress": ["identity-verification", "start"],
        "completed": ["identity-verification", "start", "completion"],
    }.get(status, [])
    bodies = {
        "identity-verification": {"method": "account_login", "verified_by": "dpo"},
        "completion": {"resolution": "Sent the export."},
    }
    for step in steps:
        body = bodies.get(step)
        response = await client.post(
            f"/v1/requests/{request_id}/{step}", json=body, headers=officer
        )
        assert response.status_code == 200, response.text
    return request_id


@pytest.mark.parametrize(("method", "path"), sorted(MATRIX), ids=lambda v: str(v))
async def test_access(
    anonymous: httpx.AsyncClient,
    credentials: dict[str, str | None],
    subject_id: str,
    method: str,
    path: str,
) -> None:
    entry = MATRIX[(method, path)]
    names = {
        "subject_id": subject_id,
        "target": OPTIONAL[0],
        "purpose": OPTIONAL[1],
        "name": "victim",
        "version": "2022-02",
        "device_id": "phone-1",
        "checkpoint_id": credentials["checkpoint_id"],
        "recipient_id": credentials["recipient_id"],
        "message_id": str(uuid.uuid4()),
    }
    mismatches = []
    for caller in CALLERS:
        if entry.request_in is not None:
            names["request_id"] = await fresh_request(anonymous, entry.request_in)
        credential = credentials[caller]
        if entry.fresh_subject:
            names["subject_id"] = f"fresh-{uuid.uuid4().hex[:12]}"
            tokens = await subject_tokens(anonymous, names["subject_id"])
            credential = tokens.get(caller, credential)
        url = path.format(**(names | entry.path))
        body = entry.body
        if body is not None and path in ("/v1/keys", "/v1/recipients"):
            body = body | {"name": f"k-{uuid.uuid4().hex[:8]}"}
        if body is not None and path == "/v1/policies":
            body = body | {"version": f"v-{uuid.uuid4().hex[:8]}"}
        if body is not None and "subject_id" in body:
            body = body | {"subject_id": subject_id}
        params = {k: v.format(subject_id=subject_id) for k, v in entry.params.items()}
        response = await anonymous.request(
            method,
            url,
            json=body,
            params=params,
            headers=auth(credential) if credential else None,
        )
        want = expected_status(entry, caller)
        if response.status_code != want:
            mismatches.append(
                f"{caller}: {response.status_code} (want {want}) {response.text[:200]}"
            )
        elif want in (401, 403, 404):
            assert response.headers["content-type"] == "application/problem+json"
            # A token that holds the scope but meets a route not bound to a subject is refused
            # for that, not for a missing scope.
            bound_only = caller in ("own", "other") and entry.scope in TOKEN_SCOPES
            named = None if bound_only else entry.scope
            if want == 403 and response.json().get("missing_scope") != named:
                mismatches.append(f"{caller}: 403 names {response.json().get('missing_scope')}")
    assert mismatches == [], f"{method} {path}"
