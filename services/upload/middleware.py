"""ASGI middleware of the gateway: one access-log line and one duration observation per request, and a body
limit for every route."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.upload.errors import error_body, problem

log = structlog.get_logger()

HTTP_SECONDS = Histogram(
    "imagepipe_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status code",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UNMATCHED = "unmatched"  # the route label of a path no route took (a 404, the static files): a fixed set
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
            seconds = time.perf_counter() - started
            # The router put the matched route in the scope: its template, never the path, is the label.
            route = getattr(scope.get("route"), "path", UNMATCHED)
            HTTP_SECONDS.labels(scope["method"], route, str(status)).observe(seconds)
            log.info(
                "http_request",
                method=scope["method"],
                path=path,
                status=status,
                duration_ms=round(seconds * 1000, 1),
            )


@dataclass(frozen=True)
class BodyLimit:
    """How large a request body a route takes; `field` names the form field the size is about, if one."""

    max_bytes: int
    field: str | None = None
    setting: str | None = None  # the setting that sets it, named in the refusal


class BodySizeLimit:
    """Every route has a body limit: its own (`limits`, by path) or `default`, enforced while the body
    streams in, before anything parses or spools it. A declared Content-Length over the limit is refused at
    once; a streamed body is cut off at the limit. Whenever a response goes out before the request's whole
    body was read (this 413, or a 401 from auth, which runs before the body is read), the connection is
    closed with it, so the server does not go on reading (and discarding) what the client still sends.
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, BodyLimit], default: BodyLimit) -> None:
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit.max_bytes:
            await _reject(send, scope, limit)
            return
        seen = 0
        body_done = length in (None, b"0") and b"transfer-encoding" not in headers  # no body at all

        async def limited() -> Message:
            nonlocal seen, body_done
            message = await receive()
            seen += len(message.get("body", b""))
            body_done = body_done or not message.get("more_body", False)
            if seen > limit.max_bytes:
                raise _TooLarge
            return message

        async def closing_if_unread(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited, closing_if_unread)
        except _TooLarge:
            await _reject(send, scope, limit)


async def _reject(send: Send, scope: Scope, limit: BodyLimit) -> None:
    route = f"{scope['method']} {scope['path']}"
    reason = f"the request body exceeds {limit.max_bytes} bytes, the limit of {route}" + (
        f" ({limit.setting})" if limit.setting else ""
    )
    body = json.dumps(
        error_body("the request body is larger than the limit", [problem(reason, field=limit.field)])
    )
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass
