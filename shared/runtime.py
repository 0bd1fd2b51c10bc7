"""The lifecycle every worker service shares: settings, logging, connections, health, graceful stop.

A service's entry point is `run_service("name", start)`, where `start(runtime)` wires its handlers and
subscriptions; everything else (connect with retries, SIGTERM, draining in-flight work) lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.bus import EventBus
from shared.logging import configure_logging
from shared.settings import Settings, get_settings
from shared.storage import Store, connect_store

log = structlog.get_logger()


@dataclass
class Runtime:
    service: str
    settings: Settings
    store: Store
    bus: EventBus
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a long-lived loop (a relay, a sweeper) until the service stops."""
        self.background.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def ready(self) -> bool:
        return self.bus.is_ready and await self.store.ping()


async def retry_until_done(what: str, action: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> bool:
    """Run `action` until it succeeds (True), backing off, or until a stop is asked for (False).

    A service starts alongside its broker and database and must wait for them; a SIGTERM while it
    waits ends the wait at once, so a stop never hangs on an outage.
    """
    delay = 0.5
    while not stopping.is_set():
        attempt = asyncio.ensure_future(action())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not attempt.done():  # stopped mid-attempt (a connect can take seconds to time out)
            attempt.cancel()
            return False
        if attempt.exception() is None:
            return True
        error = str(attempt.exception())[:200]
        log.warning("dependency_unavailable_retrying", dependency=what, error=error, retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, 10.0)
    return False


async def serve_health(runtime: Runtime) -> web.AppRunner:
    """/healthz: the process is alive. /readyz: broker and database answer. /metrics: Prometheus."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": runtime.service})

    async def readyz(_: web.Request) -> web.Response:
        ok = await runtime.ready()
        return web.json_response(
            {"status": "ready" if ok else "not ready", "broker": runtime.bus.is_ready},
            status=200 if ok else 503,
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, runtime.settings.host, runtime.settings.health_port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else runtime.settings.health_port
    log.info("health_listening", port=port)
    return runner


async def run_service(service: str, start: Callable[[Runtime], Awaitable[None]]) -> None:
    settings = get_settings()
    configure_logging(service, settings.log_level, settings.log_json)
    runtime = Runtime(service, settings, connect_store(settings), EventBus(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stopping.set)

    health = await serve_health(runtime)
    if await retry_until_done(
        "database", runtime.store.ensure_indexes, runtime.stopping
    ) and await retry_until_done("broker", runtime.bus.connect, runtime.stopping):
        await start(runtime)
        log.info("service_started")
        await runtime.stopping.wait()
    log.info("service_stopping", grace_s=settings.shutdown_grace)
    await runtime.bus.stop_consuming(settings.shutdown_grace)
    for task in runtime.background:
        task.cancel()
    await asyncio.gather(*runtime.background, return_exceptions=True)
    for close in runtime.on_close:
        await close()
    await runtime.bus.close()
    await runtime.store.close()
    await health.cleanup()
    log.info("service_stopped")
