"""The API gateway: upload a CSV, follow its status, fetch images and the output CSV, re-send notices.

Writes go through the outbox (see relay.py); reads come straight from the read model the status service
maintains. Every error has the shape described in errors.py; the write path is in intake.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from gridfs.errors import NoFile
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pymongo.errors import PyMongoError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.notifier.webhook import verify as verify_webhook_signature
from services.upload.csv_input import CsvLimits, CsvRejected
from services.upload.errors import ApiError, BodySizeLimit, install_error_handlers, problem
from services.upload.intake import discard, form_problems, store_request
from services.upload.relay import OutboxRelay
from services.upload.status_view import ShortLivedCache, View, render_status
from shared.bus import EventBus
from shared.events import NotificationRequested
from shared.read_model import output_csv
from shared.runtime import retry_until_done
from shared.settings import Settings, get_settings
from shared.storage import Store, connect_store

log = structlog.get_logger()

UPLOADS = Counter("imagepipe_upload_requests_total", "Upload attempts, by outcome", ["outcome"])
FILE_ID = re.compile(r"^[0-9a-f]{32}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
REQUEST_PATH = re.compile(r"^/(?:status|output)/(?P<request_id>[A-Za-z0-9_-]{16,64})$")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    store = connect_store(settings)
    bus = EventBus(settings)
    relay = OutboxRelay(store, bus)
    limits = CsvLimits.from_settings(settings)
    status_cache = ShortLivedCache(settings.status_cache_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        # The API serves at once, outages or not: readiness reports them, uploads answer 503 while the
        # database is down, and accepted uploads wait in the outbox until the broker is back.
        indexing = asyncio.create_task(retry_until_done("database", store.ensure_indexes, stopping))
        connecting = asyncio.create_task(retry_until_done("broker", bus.connect, stopping))
        relaying = asyncio.create_task(_after(connecting, relay.run_forever))
        yield
        stopping.set()
        for task in (indexing, connecting, relaying):
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
        await bus.close()
        await store.close()

    app = FastAPI(title="imagepipe", version="1.0", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, path="/upload", max_bytes=settings.max_csv_bytes + 64 * 1024)

    install_error_handlers(app)

    @app.middleware("http")
    async def fresh_log_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # A keep-alive connection serves many requests in one task: never let one's request_id leak on.
        structlog.contextvars.clear_contextvars()
        return await call_next(request)

    async def require_api_key(request: Request) -> None:
        if not settings.api_keys:
            return
        presented = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        if not presented or not any(
            hmac.compare_digest(presented.encode(), k.get_secret_value().encode()) for k in settings.api_keys
        ):
            raise ApiError(401, "missing or invalid API key (send it as X-API-Key)")

    # --- upload ---------------------------------------------------------------------------------------
    @app.post("/upload", status_code=202, dependencies=[Depends(require_api_key)])
    async def upload(request: Request) -> JSONResponse:
        form = await request.form(max_files=1, max_fields=10)
        file = form.get("file")
        email = _text(form.get("email")) or request.query_params.get("email", "").strip()
        webhook_url = (
            _text(form.get("webhook_url")) or request.query_params.get("webhook_url", "").strip() or None
        )
        problems = form_problems(file, email, webhook_url, allow_private=settings.fetch_allow_private)
        if problems:
            UPLOADS.labels("rejected").inc()
            raise ApiError(422 if file is not None else 400, "invalid form fields", problems)
        assert isinstance(file, UploadFile)
        if file.size is not None and file.size > settings.max_csv_bytes:
            raise ApiError(
                413,
                f"CSV is larger than the {settings.max_csv_bytes} byte limit",
                [problem(f"{file.size} bytes; the limit is {settings.max_csv_bytes}", field="file")],
            )

        request_id = secrets.token_urlsafe(16)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            accepted = await store_request(store, limits, request_id, file, email, webhook_url)
        except CsvRejected as exc:
            UPLOADS.labels("rejected").inc()
            await discard(store, request_id)
            error = f"{exc}; nothing was queued"
            raise ApiError(
                exc.status_code, error, [problem(p.reason, row=p.row, column=p.column) for p in exc.problems]
            ) from None
        except PyMongoError as exc:
            UPLOADS.labels("unavailable").inc()
            log.error("upload_storage_failed", error=str(exc)[:200])
            await discard(store, request_id)
            raise ApiError(503, "storage is unavailable; nothing was accepted, try again shortly") from None
        relay.kick()
        UPLOADS.labels("accepted").inc()
        log.info("upload_accepted", products=accepted["total_products"], images=accepted["total_images"])
        return JSONResponse(
            {
                "request_id": request_id,
                "status": "PENDING",
                "status_url": f"{settings.base_url}/status/{request_id}",
                "output_csv_url": f"{settings.base_url}/output/{request_id}",
                "products": accepted["total_products"],
                "images": accepted["total_images"],
            },
            status_code=202,
        )

    # --- reads ----------------------------------------------------------------------------------------
    @app.get("/status/{request_id}", dependencies=[Depends(require_api_key)])
    async def status(request_id: str, offset: int = 0, limit: int = 20, view: View = "full") -> Response:
        """The request's progress, and a page of its products (`view=summary`: progress only, for pollers)."""
        if offset < 0 or not 1 <= limit <= 1000:
            raise ApiError(
                400, "invalid paging", [problem("offset >= 0 and 1 <= limit <= 1000", field="limit")]
            )

        async def render() -> bytes:
            projection = None if view == "full" else {"notifications": 0}
            request = await _request_or_404(store, request_id, projection=projection)
            return await render_status(store, request, settings.base_url, offset, limit, view)

        body = await status_cache.get((request_id, offset, limit, view), render)
        return Response(body, media_type="application/json")

    @app.get("/image/{file_id}")
    async def image(file_id: str) -> Response:
        # Public by design: the id is an unguessable capability, and these links go out in CSVs and emails.
        if not FILE_ID.match(file_id):
            raise ApiError(404, "no such image")
        try:
            grid_out = await store.open_file(file_id)
        except NoFile:
            raise ApiError(404, "no such image") from None
        content_type = (grid_out.metadata or {}).get("contentType", "application/octet-stream")

        async def body() -> AsyncIterator[bytes]:
            while chunk := await grid_out.readchunk():
                yield chunk

        return StreamingResponse(
            body(),
            media_type=content_type,
            headers={
                "Content-Length": str(grid_out.length),
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )

    @app.get("/output/{request_id}", dependencies=[Depends(require_api_key)])
    async def output(request_id: str) -> StreamingResponse:
        doc = await _request_or_404(store, request_id, projection={"status": 1, "columns": 1})
        if doc["status"] != "COMPLETED":
            raise ApiError(409, "the request is not complete yet; the output CSV exists once it is")
        return StreamingResponse(
            output_csv(store, request_id, doc["columns"], settings.base_url),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="imagepipe-{request_id}.csv"'},
        )

    # --- re-notify ------------------------------------------------------------------------------------
    @app.post("/webhook-completed", status_code=202)
    async def webhook_completed(request: Request) -> dict[str, Any]:
        raw = await request.body()
        signed = await _authorise_renotify(settings, request, raw, require_api_key)
        request_id = await _request_id_from(request, raw, signed_body_only=signed)
        doc = await _request_or_404(store, request_id, projection={"status": 1})
        if doc["status"] != "COMPLETED":
            raise ApiError(409, "the request is not complete yet; its notification goes out when it is")
        # At most one re-send per interval and request: each one is an email, and a record on the request.
        now = datetime.now(UTC)
        claimed = await store.requests.update_one(
            {"_id": request_id, "renotify_after": {"$not": {"$gt": now}}},
            {"$set": {"renotify_after": now + timedelta(seconds=settings.renotify_interval_seconds)}},
        )
        if claimed.modified_count != 1:
            raise ApiError(
                429,
                "a re-send for this request was just queued; try again later",
                retry_after=int(settings.renotify_interval_seconds),
            )
        try:
            await bus.publish(NotificationRequested(request_id=request_id))
        except Exception:
            raise ApiError(503, "the message broker is unavailable; try again shortly") from None
        log.info("renotify_requested", request_id=request_id)
        return {"request_id": request_id, "notification": "queued"}

    # --- operations -----------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "upload"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        db = await store.ping()
        ok = db and bus.is_ready
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "database": db, "broker": bus.is_ready},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.state.store, app.state.bus, app.state.relay = store, bus, relay
    return app


# --- helpers ----------------------------------------------------------------------------------------------
async def _after(first: asyncio.Task[bool], then: Callable[[], Awaitable[None]]) -> None:
    if await first:
        await then()


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


async def _request_or_404(store: Store, request_id: str, projection: dict[str, int] | None) -> dict[str, Any]:
    structlog.contextvars.bind_contextvars(request_id=request_id)
    doc = (
        await store.requests.find_one({"_id": request_id}, projection=projection)
        if REQUEST_ID.match(request_id)
        else None
    )
    if doc is None:
        raise ApiError(404, f"unknown request_id {request_id!r}")
    return doc


async def _request_id_from(request: Request, raw: bytes, *, signed_body_only: bool) -> str:
    """From the query, a JSON body or a form; only from the JSON body when a signature vouches for it
    (it covers the body alone, and an outgoing webhook replayed here has no top-level request_id)."""
    request_id = None if signed_body_only else request.query_params.get("request_id")
    content_type = "application/json" if signed_body_only else request.headers.get("content-type", "")
    if not request_id and content_type.startswith("application/json") and raw:
        try:
            body = json.loads(raw)
            request_id = body.get("request_id") if isinstance(body, dict) else None
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None
    elif not request_id and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        request_id = _text((await request.form()).get("request_id"))
    if not request_id or not isinstance(request_id, str):
        raise ApiError(
            400, "request_id is required", [problem('send {"request_id": "..."}', field="request_id")]
        )
    return request_id


async def _authorise_renotify(
    settings: Settings, request: Request, raw: bytes, require_api_key: Callable[[Request], Awaitable[None]]
) -> bool:
    """With auth on, either an API key or a valid Standard Webhooks signature will do.

    True when the signature is what authorised the call."""
    if not settings.api_keys:
        return False
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if secret and "webhook-signature" in request.headers:
        if verify_webhook_signature(secret, dict(request.headers), raw):
            return True
        raise ApiError(401, "invalid webhook signature")
    await require_api_key(request)
    return False


class AccessLog:
    """One structured line per HTTP request, carrying the request_id like every other log line.

    It replaces uvicorn's access log, which is written outside the request's logging context. The context is
    cleared first: a keep-alive connection serves many requests in one task, and none may inherit another's.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        path: str = scope["path"]
        if match := REQUEST_PATH.match(path):
            structlog.contextvars.bind_contextvars(request_id=match["request_id"])
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            log.info(
                "http_request",
                method=scope["method"],
                path=path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
