"""``/v1/checks``: the hot path. An API key is verified by the same single statement that reads
the subject and its consents (``app.checks.fast``); any other credential is authenticated as on
every route, and refused (no subject token may run checks)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import TypeAdapter
from pydantic_core import to_json
from starlette.routing import Route

from app.catalogue.loader import Catalogue, Pair
from app.catalogue.service import resolve_pair
from app.checks.decision import (
    ConsentState,
    Decision,
    OsState,
    Policies,
    SubjectFacts,
    unasked,
)
from app.checks.fast import HotPath
from app.checks.schemas import CheckQuery, CheckRequest, CheckResponse
from app.checks.service import decide_all, subject_facts
from app.core.config import Settings
from app.core.db import Database
from app.core.errors import InvalidInput, problem_responses
from app.core.schemas import read_body, read_query
from app.core.security import (
    KEY_PREFIX,
    Scope,
    authenticate,
    bearer,
    hash_api_key,
    key_principal,
    require_scope,
)
from app.core.types import utcnow

router = APIRouter(prefix="/v1/checks", tags=["checks"])


async def key_digest(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The API key's digest, checked later in the check's own statement. Anything else is
    authenticated here and refused: only API keys (the app's backend) run checks."""
    if credentials is not None and credentials.credentials.startswith(KEY_PREFIX):
        return hash_api_key(credentials.credentials)
    principal = await authenticate(request, credentials, request.app.state.database)
    require_scope(principal, Scope.CHECKS_RUN)
    raise AssertionError("no credential but an API key carries checks:run")  # pragma: no cover


KeyDigest = Annotated[str, Depends(key_digest)]


@dataclass(slots=True)
class _Answer:
    """``CheckResponse``'s shape, over the decisions as they are: serialised by the adapter
    below in one step, without a model or a dictionary per decision (BENCHMARKS.md, step 17)."""

    subject_id: str
    decisions: list[Decision]


_ANSWER = TypeAdapter(_Answer)


def answer(subject_id: str, decisions: list[Decision]) -> bytes:
    """The check's JSON body."""
    return _ANSWER.dump_json(_Answer(subject_id, decisions))


_DECISION = TypeAdapter(Decision).serializer


class Answers:
    """The check's JSON body for the application's catalogue (loaded once, at start-up): what
    ``answer`` writes for ``decide_all``'s decisions, byte for byte, but with each pair's
    ``decision.unasked`` decided and written once, and used wherever it applies (a pair the
    subject has no consent to: typically most of a batch). Deciding and writing a batch of 20
    took as long as its statement; this took that from 26 to 10 µs (BENCHMARKS.md, step 29)."""

    def __init__(self, catalogue: Catalogue, settings: Settings) -> None:
        self._unasked = {key: _DECISION.to_json(unasked(p)) for key, p in catalogue.pairs.items()}
        self._settings = settings

    def body(
        self,
        subject_id: str,
        pairs: list[Pair],
        consents: dict[tuple[str, str], ConsentState],
        os: dict[str, OsState],
        facts: SubjectFacts,
        policies: Policies,
        now: datetime,
        device_id: str | None,
    ) -> bytes:
        decisions = decide_all(
            self._settings, pairs, consents, os, facts, policies, now, device_id, self._unasked
        )
        parts = [d if isinstance(d, bytes) else _DECISION.to_json(d) for d in decisions]
        return b'{"subject_id":%b,"decisions":[%b]}' % (to_json(subject_id), b",".join(parts))


async def _check(
    request: Request, digest: str, subject_id: str, pairs: list[Pair], device_id: str | None
) -> Response:
    # The application's parts straight from its state: on this route each dependency FastAPI
    # resolves is a measurable share of the time (BENCHMARKS.md).
    state = request.app.state
    hot: HotPath = state.hot_path
    settings: Settings = state.settings
    database: Database = state.database
    answers: Answers = state.answers
    keys = [p.key for p in pairs]
    found = await hot.lookup(digest, subject_id, keys, device_id)
    require_scope(key_principal(database, found.key), Scope.CHECKS_RUN)
    now = utcnow()
    facts = subject_facts(found.subject, settings, now)
    body = answers.body(
        subject_id, pairs, found.consents, found.os, facts, found.policies, now, device_id
    )
    return Response(body, media_type="application/json")


@router.post(
    "",
    operation_id="checks-create",
    response_model=CheckResponse,
    responses=problem_responses(InvalidInput),
)
async def check_many(request: Request, payload: CheckRequest, digest: KeyDigest) -> Response:
    """May the app process each (target, purpose) for this subject, right now? Up to 100 items."""
    catalogue: Catalogue = request.app.state.catalogue
    try:
        pairs = [catalogue.pairs[item["target"], item["purpose"]] for item in payload.items]
    except KeyError:  # the 422 names the first item that is not a pair of the catalogue
        pairs = [
            resolve_pair(catalogue, item["target"], item["purpose"], ("body", "items", i))
            for i, item in enumerate(payload.items)
        ]
    return await _check(request, digest, payload.subject_id, pairs, payload.device_id)


@router.get(
    "",
    operation_id="checks-get",
    response_model=CheckResponse,
    responses=problem_responses(InvalidInput),
)
async def check_one(
    request: Request, query: Annotated[CheckQuery, Query()], digest: KeyDigest
) -> Response:
    """One decision, in the same shape as ``POST /v1/checks``."""
    catalogue: Catalogue = request.app.state.catalogue
    pair = resolve_pair(catalogue, query.target, query.purpose, ("query",))
    return await _check(request, digest, query.subject_id, [pair], query.device_id)


# The routes above are what FastAPI documents; these serve them, ahead of FastAPI's own handling
# and its middleware (app.core.serving). They resolve the same parameters with the same models,
# in the same order (the body's JSON, the credential, then validation), with the same errors, and
# call the same endpoints: FastAPI's resolution of them was a third of a check (BENCHMARKS.md).


async def _serve_check_one(request: Request) -> Response:
    digest = await key_digest(request, await bearer(request))
    return await check_one(request, read_query(request, CheckQuery), digest)


async def _serve_check_many(request: Request) -> Response:
    payload = await read_body(request, CheckRequest)
    digest = await key_digest(request, await bearer(request))
    return await check_many(request, payload.get(), digest)


direct_routes = [
    Route("/v1/checks", _serve_check_one, methods=["GET"]),
    Route("/v1/checks", _serve_check_many, methods=["POST"]),
]
