"""A real local HTTP origin for tests: serves images, misbehaves on request, and receives webhooks."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Origin:
    images: dict[str, bytes] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    fail_first: dict[str, int] = field(default_factory=dict)  # name -> how many 500s before serving
    delay: dict[str, float] = field(default_factory=dict)  # name -> seconds before answering
    held: dict[str, asyncio.Event] = field(default_factory=dict)  # name -> answered once the event is set
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    webhook_failures: int = 0  # answer the next N webhook calls with 500
    base_url: str = ""
    _runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"{self.base_url}/img/{name}"

    async def start(self) -> Origin:
        app = web.Application()
        app.router.add_get("/img/{name}", self._image)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _image(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if name in self.delay:
            await asyncio.sleep(self.delay[name])
        if name in self.held:
            await self.held[name].wait()
        if self.fail_first.get(name, 0) > 0:
            self.fail_first[name] -= 1
            return web.Response(status=500, text="try again")
        if name not in self.images:
            return web.Response(status=404, text="not found")
        return web.Response(body=self.images[name], content_type="image/jpeg")

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.webhooks.append({"headers": dict(request.headers), "body": body})
        if self.webhook_failures > 0:
            self.webhook_failures -= 1
            return web.Response(status=500)
        return web.Response(status=204)


@dataclass
class SilentOrigin:
    """A host that accepts connections and never answers: the worst kind of dead host (each request
    costs a fetcher its whole read timeout, not a quick refusal)."""

    connections: int = 0
    base_url: str = ""
    _server: asyncio.Server | None = None
    _held: list[asyncio.StreamWriter] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/img/{name}"

    async def start(self) -> SilentOrigin:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0, backlog=1024)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass  # read what the fetcher sends, and say nothing
        writer.close()
        self._held.remove(writer)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._held):
                writer.close()
