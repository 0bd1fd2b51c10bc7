"""What the gateway's routes depend on, handed to them by FastAPI: the gateway's parts, and API-key auth."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Annotated

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPBearer

from services.upload.csv_input import CsvLimits
from services.upload.errors import ApiError
from services.upload.lifecycle import Deletions
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
    progress_cache: ShortLivedCache  # live progress renderings, shared by every watcher of a request
    deletions: Deletions = field(init=False)

    def __post_init__(self) -> None:
        self.deletions = Deletions(self.runtime.repo, self.runtime.images)

    async def request_or_404(
        self, request_id: str, owner: str | None, *, notifications: bool = True
    ) -> RequestDoc:
        """The request, if the caller may see it. `owner` is the caller's (`caller_owner`); None lets
        anyone see any request (keys off, or a call authorised otherwise). Another key's request is a 404,
        exactly like one that does not exist: its existence is not revealed."""
        structlog.contextvars.bind_contextvars(request_id=request_id)
        found = (
            await self.runtime.repo.get(request_id, notifications=notifications)
            if REQUEST_ID_PATTERN.match(request_id)
            else None
        )
        if (
            found is None
            or found["status"] == RequestStatus.RECEIVING  # not accepted (yet)
            or (owner is not None and found.get("owner") != owner)
        ):
            raise ApiError(404, f"unknown request_id {request_id!r}")
        return found


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


# The security schemes /docs offers under "Authorize". auto_error=False: require_api_key decides, so that auth
# can be off (local mode) and every refusal has the one error shape.
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="One of IMAGEPIPE_API_KEYS (only needed when keys are configured).",
    auto_error=False,
)
BEARER = HTTPBearer(scheme_name="Bearer", description="The same API key as a Bearer token.", auto_error=False)
# EventSource cannot send headers, so the live-progress route alone also takes the key as `?api_key=`.
API_KEY_QUERY = APIKeyQuery(
    name="api_key",
    scheme_name="ApiKeyQuery",
    description="The API key as a query parameter: GET /status/{id}/events only (browsers' EventSource).",
    auto_error=False,
)


OWNER_HEX_CHARS = 16  # 64 bits of the key's SHA-256: tells keys apart, and reveals nothing of them


def presented_key(request: Request, *, query: bool = False) -> str:
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    return key or (request.query_params.get("api_key", "") if query else "")


def _check_key(presented: str, gateway: Gateway) -> None:
    keys = gateway.runtime.settings.api_keys
    if not keys:
        return
    if not presented or not any(
        hmac.compare_digest(presented.encode(), k.get_secret_value().encode()) for k in keys
    ):
        raise ApiError(401, "missing or invalid API key (send it as X-API-Key)")


async def require_api_key(
    request: Request,
    gateway: GatewayDep,
    _header: Annotated[str | None, Security(API_KEY_HEADER)] = None,
    _bearer: Annotated[object, Security(BEARER)] = None,
) -> None:
    """With IMAGEPIPE_API_KEYS set, every route that uses this needs one of them (X-API-Key or Bearer)."""
    _check_key(presented_key(request), gateway)


async def require_api_key_or_query(
    request: Request,
    gateway: GatewayDep,
    _header: Annotated[str | None, Security(API_KEY_HEADER)] = None,
    _bearer: Annotated[object, Security(BEARER)] = None,
    _query: Annotated[str | None, Security(API_KEY_QUERY)] = None,
) -> None:
    """require_api_key, also taking `?api_key=`: for the one route a browser opens with EventSource."""
    _check_key(presented_key(request, query=True), gateway)


ApiKey = Depends(require_api_key)
ApiKeyOrQuery = Depends(require_api_key_or_query)


def owner_of(key: str) -> str:
    """A short stable name for an API key, stored on what it creates (its requests, its idempotency keys)."""
    return hashlib.sha256(key.encode()).hexdigest()[:OWNER_HEX_CHARS]


async def caller_owner(request: Request, gateway: GatewayDep) -> str | None:
    """Who is calling, for what is theirs: `owner_of` their API key, as the route's ApiKey (or, on the
    events route, ApiKeyOrQuery) checked it; None when keys are off (local mode: everything is everyone's)."""
    if not gateway.runtime.settings.api_keys:
        return None
    return owner_of(presented_key(request, query=True))


Owner = Annotated[str | None, Depends(caller_owner)]
