"""Liveness, readiness and metrics of the gateway, as every worker serves them on its health port."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.upload.deps import GatewayDep
from services.upload.openapi import Health, Readiness, ok

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


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=ok("Prometheus metrics.", media_type="text/plain"),
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
