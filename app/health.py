"""Liveness and readiness."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from app.core.db import DatabaseDep
from app.core.errors import ServiceUnavailable, problem_responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/healthz", operation_id="health-live", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="health-ready",
    response_model=Health,
    responses=problem_responses(ServiceUnavailable),
)
async def readyz(request: Request, database: DatabaseDep) -> Health | JSONResponse:
    """The database answers; 503 otherwise."""
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable(f"database unreachable: {type(exc).__name__}") from exc
    return Health(status="ready")
