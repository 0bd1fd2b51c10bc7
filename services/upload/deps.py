"""What the gateway's routes depend on, handed to them by FastAPI: the gateway's parts, and API-key auth."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request

from services.upload.csv_input import CsvLimits
from services.upload.errors import ApiError
from services.upload.relay import OutboxRelay
from services.upload.status_view import ShortLivedCache
from shared.repository import REQUEST_ID_PATTERN, RequestDoc, RequestStatus
from shared.runtime import Runtime


@dataclass
class Gateway:
    runtime: Runtime
    relay: OutboxRelay
    limits: CsvLimits
    status_cache: ShortLivedCache

    async def request_or_404(self, request_id: str, *, notifications: bool = True) -> RequestDoc:
        structlog.contextvars.bind_contextvars(request_id=request_id)
        found = (
            await self.runtime.repo.get(request_id, notifications=notifications)
            if REQUEST_ID_PATTERN.match(request_id)
            else None
        )
        if found is None or found["status"] == RequestStatus.RECEIVING:  # not accepted (yet)
            raise ApiError(404, f"unknown request_id {request_id!r}")
        return found


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


def presented_key(request: Request) -> str:
    return request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
        "Bearer "
    )


async def require_api_key(request: Request, gateway: GatewayDep) -> None:
    """With IMAGEPIPE_API_KEYS set, every route that uses this needs one of them (X-API-Key or Bearer)."""
    keys = gateway.runtime.settings.api_keys
    if not keys:
        return
    presented = presented_key(request)
    if not presented or not any(
        hmac.compare_digest(presented.encode(), k.get_secret_value().encode()) for k in keys
    ):
        raise ApiError(401, "missing or invalid API key (send it as X-API-Key)")


ApiKey = Depends(require_api_key)
