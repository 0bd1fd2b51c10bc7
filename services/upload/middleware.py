"""ASGI middleware of the gateway: one access-log line per request, and an early 413 for oversized uploads."""

from __future__ import annotations

import json
import re
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.upload.errors import error_body, problem

log = structlog.get_logger()

REQUEST_PATH = re.compile(r"^/(?:status|output)/(?P<request_id>[A-Za-z0-9_-]{16,64})(?:/events)?$")


class AccessLog:
    """One structured line per HTTP request (method, path, status, duration), carrying the request_id like
    every other log line; uvicorn's own access log is off, since it is written outside the request's logging
    context. The context is cleared first: a keep-alive connection serves many requests in one task, and
    none may inherit another's request_id.
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


class BodySizeLimit:
    """Refuse an oversized upload with 413 while it streams in, before it is parsed or spooled."""

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        reason = f"the request body exceeds {self.max_bytes} bytes"
        body = json.dumps(error_body("the upload is larger than the limit", [problem(reason, field="file")]))
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass
