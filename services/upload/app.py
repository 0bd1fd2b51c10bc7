"""The API gateway's composition root: its parts, its middleware and its routes, wired once.

Writes go through the outbox (relay.py); reads come straight from the read model the status service
maintains. Routes live in routes/, the write path in intake.py, every error's shape in errors.py, what
/docs shows in openapi.py, the web page in web/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from services.upload import lifecycle
from services.upload.csv_input import CsvLimits
from services.upload.deps import Gateway
from services.upload.errors import install_error_handlers
from services.upload.intake import settle_abandoned_uploads_forever
from services.upload.middleware import AccessLog, BodyLimit, BodySizeLimit
from services.upload.openapi import DESCRIPTION, install_openapi
from services.upload.relay import OutboxRelay
from services.upload.routes import events, health, images, notifications, page, requests, uploads
from services.upload.status_view import ShortLivedCache
from shared.runtime import Runtime, serve_health
from shared.settings import Settings, get_settings

UPLOAD_OVERHEAD_BYTES = 64 * 1024  # the multipart framing and form fields around the CSV
SMALL_BODY = BodyLimit(8 * 1024)  # every other route: a JSON or form body of a few fields, or none


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime = Runtime.create("upload", settings)
    relay = OutboxRelay(runtime.repo, runtime.bus, window=settings.outbox_window)
    caches = ShortLivedCache(settings.status_cache_seconds), ShortLivedCache(settings.events_interval_seconds)
    gateway = Gateway(runtime, relay, CsvLimits.from_settings(settings), *caches)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The API serves at once, outages or not: readiness reports them, uploads answer 503 while the
        # database is down, and accepted uploads wait in the outbox until the broker is back.
        runtime.spawn(_connect_then_relay(runtime, relay), "connect-then-relay")
        health = await serve_health(runtime)  # /metrics, with /healthz and /readyz: not on the API port
        yield
        await runtime.shutdown()
        await health.cleanup()

    # /docs and /redoc load Swagger UI and ReDoc from this server (fastapi-offline), never from a CDN.
    app = FastAPIOffline(title="imagepipe", version="1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.gateway = gateway
    install_error_handlers(app)
    install_openapi(app)
    upload = BodyLimit(
        settings.max_csv_bytes + UPLOAD_OVERHEAD_BYTES,
        field="file",
        setting=f"IMAGEPIPE_MAX_CSV_BYTES: {settings.max_csv_bytes} for the CSV, plus room for the form",
    )
    app.add_middleware(BodySizeLimit, limits={"/upload": upload}, default=SMALL_BODY)
    app.add_middleware(AccessLog)  # added last, so outermost: it also logs what the size limit refuses
    for module in (uploads, requests, events, images, notifications, health, page):
        app.include_router(module.router)
    app.mount(page.STATIC_PATH, page.static_files, name="static")
    return app


async def _connect_then_relay(runtime: Runtime, relay: OutboxRelay) -> None:
    if await runtime.connect():
        runtime.spawn(settle_abandoned_uploads_forever(runtime.repo), "upload-janitor")
        retention = runtime.settings.retention
        runtime.spawn(lifecycle.sweep_forever(runtime.repo, runtime.images, retention), "lifecycle-sweeper")
        await relay.run_forever()
