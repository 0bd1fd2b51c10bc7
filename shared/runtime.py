"""The lifecycle every service shares: settings, logging, connections, health, graceful stop.

A worker's entry point is `run_service("name", start)`, where `start(runtime)` subscribes its handlers; the
gateway runs the same `Runtime` inside its ASGI lifespan. Everything else (connect with retries, SIGTERM,
draining in-flight work, closing) lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.bus import EventBus
from shared.files import GridFsImageStore
from shared.links import Links
from shared.logging import configure_logging
from shared.mongo import Mongo, connect_mongo
from shared.repository import MongoRequestRepository
from shared.retry import backoff_delay
from shared.settings import Settings, get_settings

log = structlog.get_logger()

Start = Callable[["Runtime"], Awaitable[None]]


@dataclass
class Runtime:
    """One service's connections and background work, from start to a clean stop."""

    service: str
    settings: Settings
    mongo: Mongo
    bus: EventBus
    repo: MongoRequestRepository = field(init=False)
    images: GridFsImageStore = field(init=False)
    links: Links = field(init=False)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.repo = MongoRequestRepository(self.mongo)
        self.images = GridFsImageStore(self.mongo)
        self.links = Links(self.settings.base_url)

    @classmethod
    def create(cls, service: str, settings: Settings) -> Runtime:
        return cls(service, settings, connect_mongo(settings), EventBus(settings))

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a long-lived loop (a relay, a sweeper) until the service stops."""
        self.background.append(asyncio.create_task(coro, name=name))

    async def connect(self) -> bool:
        """Wait for the database and the broker (as long as it takes); False if a stop came first."""
        return await retry_until_done(
            "database", self.mongo.ensure_indexes, self.stopping
        ) and await retry_until_done("broker", self.bus.connect, self.stopping)

    async def ready(self) -> bool:
        return self.bus.is_ready and await self.mongo.ping()

    async def shutdown(self) -> None:
        """Stop taking work, let in-flight work finish within the grace period, then close everything."""
        self.stopping.set()
        log.info("service_stopping", grace_s=self.settings.shutdown_grace)
        await self.bus.stop_consuming(self.settings.shutdown_grace)
        for task in self.background:
            task.cancel()
        if self.background:  # bounded: a loop that swallowed its cancellation must not hang the stop
            _, stuck = await asyncio.wait(self.background, timeout=self.settings.shutdown_grace)
            if stuck:
                log.error("background_tasks_not_stopped", tasks=[task.get_name() for task in stuck])
        for close in self.on_close:
            await close()
        await self.bus.close()
        await self.mongo.close()
        log.info("service_stopped")


async def wait_until_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; True if it was set. A cancellation always goes through: Python
    3.11's asyncio.wait_for can swallow one that arrives as its timeout fires, leaving a loop that was
    told to stop running forever."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


async def retry_until_done(what: str, action: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> bool:
    """Run `action` until it succeeds (True), backing off, or until a stop is asked for (False).

    A service starts alongside its broker and database and must wait for them; a SIGTERM while it
    waits ends the wait at once, so a stop never hangs on an outage.
    """
    failures = 0
    while not stopping.is_set():
        attempt = asyncio.ensure_future(action())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not attempt.done():  # stopped mid-attempt (a connect can take seconds to time out)
            attempt.cancel()
            # It may still end in an error (the client closed under it): that is expected, not news.
            attempt.add_done_callback(lambda done: done.cancelled() or done.exception())
            return False
        if attempt.exception() is None:
            return True
        delay = backoff_delay(failures, base=0.5, max_delay=10.0, jitter=0.0)
        failures += 1
        error = str(attempt.exception())[:200]
        log.warning("dependency_unavailable_retrying", dependency=what, error=error, retry_in_s=delay)
        await wait_until_set(stopping, delay)
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


async def run_service(service: str, start: Start) -> None:
    """A worker's whole life: connect, `start` (subscribe), serve until SIGTERM, drain, stop."""
    settings = get_settings()
    configure_logging(service, settings.log_level, settings.log_json)
    runtime = Runtime.create(service, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stopping.set)

    health = await serve_health(runtime)
    if await runtime.connect():
        await start(runtime)
        log.info("service_started")
        await runtime.stopping.wait()
    await runtime.shutdown()
    await health.cleanup()


def main(service: str, start: Start) -> None:
    """A worker's entry point: `run_service` on uvloop, whose event loop, sockets and callbacks are C
    (less CPU per message and per database round trip than asyncio's own loop)."""
    uvloop.run(run_service(service, start))
