"""The application: ``create_app(settings)`` and its lifespan."""

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from app import __version__
from app.audit.checkpoints import create_checkpoint, signing_key
from app.audit.router import router as audit_router
from app.auth.router import router as auth_router
from app.catalogue.loader import load_catalogue
from app.catalogue.router import router as catalogue_router
from app.catalogue.service import sync_catalogue
from app.checks.fast import HotPath
from app.checks.router import Answers
from app.checks.router import direct_routes as checks_direct
from app.checks.router import router as checks_router
from app.consents.router import direct_routes as consents_direct
from app.consents.router import router as consents_router
from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.errors import install_error_handlers
from app.core.idempotency import purge_expired
from app.core.migrate import current_revision, head_revision
from app.core.security import Principal, Scope, requires
from app.core.serving import ConsentLedgerAPI
from app.core.signing import load_signing_secret
from app.health import router as health_router
from app.metrics import router as metrics_router
from app.permissions.router import router as permissions_router
from app.policies.router import router as policies_router
from app.requests.router import router as requests_router
from app.requests.router import subject_router as subject_requests_router
from app.subjects.router import router as subjects_router
from app.webhooks.delivery import Deliverer
from app.webhooks.router import router as recipients_router

logger = logging.getLogger("consent_ledger")

PURGE_INTERVAL_SECONDS = 3600
# A young collection after this many more container objects are made than freed (CPython: 700).
YOUNG_COLLECTION_EVERY = 10_000


class NotMigrated(RuntimeError):
    pass


async def _every(seconds: float, job: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``job`` every ``seconds`` until cancelled; a failure is logged and retried."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception:
            logger.exception("%s failed; will retry", what)


def _background_jobs(
    settings: Settings, database: Database, key: Ed25519PrivateKey
) -> list[asyncio.Task[None]]:
    retention = timedelta(hours=settings.idempotency_retention_hours)

    async def purge() -> None:
        async with database.write_sessions() as session:
            purged = await purge_expired(session, retention)
        if purged:
            logger.info("forgot %d idempotency keys older than %s", purged, retention)

    jobs = [asyncio.create_task(_every(PURGE_INTERVAL_SECONDS, purge, "purging idempotency keys"))]
    interval = settings.checkpoint_interval_seconds
    if interval:
        # Every worker looks often; the first to find the latest checkpoint older than the
        # interval writes the next one, under a lock, so there is one per interval.
        async def checkpoint() -> None:
            written = await create_checkpoint(
                database, key, unless_newer_than=timedelta(seconds=interval)
            )
            if written is not None:
                logger.info("checkpoint %s: %d events", written.id, written.event_count)

        poll = min(interval, 60)
        jobs.append(asyncio.create_task(_every(poll, checkpoint, "writing a checkpoint")))
    return jobs


@contextmanager
def steady_collector() -> Iterator[None]:
    """While the application serves: the objects it keeps for its life (routes, schemas, the
    ORM's metadata, the catalogue: ~160,000) are moved out of the cycle collector's way
    (``gc.freeze``), and young collections run every YOUNG_COLLECTION_EVERY objects.

    With CPython's defaults a full collection walked all of them, ~90 ms with every request in
    flight paused, 14 times in 6 s of batch checks: a fifth of the worker's time
    (BENCHMARKS.md, step 16). What a request makes is still freed by reference counting as
    before, and its cycles by the young collections. All undone at shutdown."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@asynccontextmanager
async def lifespan(app: ConsentLedgerAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.signing_secret = load_signing_secret(settings)
    app.state.checkpoint_key = signing_key(app.state.signing_secret)
    current, head = await current_revision(settings.database_url), head_revision()
    if current != head:
        raise NotMigrated(
            f"the database is at migration {current or 'none'}, this version needs {head}: "
            "run `consent-ledger migrate`"
        )
    database = Database(settings)
    catalogue = load_catalogue()
    async with database.write_sessions() as session, session.begin():
        await sync_catalogue(session, catalogue)
    app.state.database = database
    app.state.catalogue = catalogue
    app.state.answers = Answers(catalogue, settings)
    app.state.hot_path = hot_path = HotPath(settings, database)
    jobs = _background_jobs(settings, database, app.state.checkpoint_key)
    stop_delivering = asyncio.Event()
    delivery = None
    if settings.webhook_worker == "in-process":
        deliverer = Deliverer(settings, database)
        delivery = asyncio.create_task(deliverer.run(stop_delivering))
    try:
        await app.route_once()
        with steady_collector():
            yield
    finally:
        if delivery is not None:
            # Let a round under way finish (a delivery takes at most the time-out); a claim
            # left behind is taken over by another worker once its lease lapses.
            stop_delivering.set()
            try:
                await asyncio.wait_for(delivery, settings.webhook_timeout_seconds + 5)
            except TimeoutError:
                logger.warning("webhook deliveries still under way at shutdown were left")
            await deliverer.aclose()
        try:
            await hot_path.close()
        finally:
            for job in jobs:
                job.cancel()
            for job in jobs:
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            await database.dispose()


def create_app(settings: Settings | None = None) -> ConsentLedgerAPI:
    settings = settings or get_settings()
    public_docs = settings.public_docs
    app = ConsentLedgerAPI(
        title="Consent Ledger",
        version=__version__,
        summary="May the app collect X for purpose P for this user, right now?",
        lifespan=lifespan,
        openapi_url="/openapi.json" if public_docs else None,
        docs_url="/docs" if public_docs else None,
        redoc_url="/redoc" if public_docs else None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    if not public_docs:
        _serve_openapi_to_callers(app)
    # The hot paths first: routes are matched in order, and the check and the consent change
    # are the ones called most.
    for router in (
        checks_router,
        consents_router,
        health_router,
        auth_router,
        catalogue_router,
        subjects_router,
        policies_router,
        permissions_router,
        audit_router,
        subject_requests_router,
        requests_router,
        recipients_router,
        metrics_router,
    ):
        app.include_router(router)
    # The hot paths, the checks and the consent changes, served ahead of FastAPI's middleware
    # and routing (app.core.serving) by the same endpoints (app.checks.router,
    # app.consents.router).
    app.hot_routes = [*checks_direct, *consents_direct]
    return app


def _serve_openapi_to_callers(app: FastAPI) -> None:
    """With public docs off, the OpenAPI document is still there for anyone with a credential."""

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(
        _principal: Annotated[Principal, requires(Scope.CATALOGUE_READ)],
    ) -> dict[str, Any]:
        return app.openapi()
