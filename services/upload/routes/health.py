"""Liveness and readiness of the gateway on its API port. Its /metrics is served, with /healthz and /readyz
again, on its health port (IMAGEPIPE_HEALTH_PORT, shared/runtime.py), as every worker's: never to the
public."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.upload.deps import GatewayDep
from services.upload.openapi import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok", "service": "upload"}


@router.get(
    "/readyz",
    summary="Readiness: the database and the broker answer",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The database or the broker is unavailable."}},
)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    db = await gateway.runtime.mongo.ping()
    broker = gateway.runtime.bus.is_ready
    return JSONResponse(
        {"status": "ready" if db and broker else "not ready", "database": db, "broker": broker},
        status_code=200 if db and broker else 503,
    )
