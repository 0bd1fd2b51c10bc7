"""One error shape for every rejection the API makes, and the guard that refuses oversized uploads early.

{"error": "<summary>", "problems": [{"row": 3, "column": "Product Name", "field": null, "reason": "..."}]}
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def problem(
    reason: str, *, field: str | None = None, row: int | None = None, column: str | None = None
) -> dict[str, Any]:
    return {"row": row, "column": column, "field": field, "reason": reason}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        problems: list[dict[str, Any]] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, problems or []
        self.retry_after = retry_after if retry_after is not None else (5 if status == 503 else None)


def error_body(error: str, problems: list[dict[str, Any]]) -> dict[str, Any]:
    return {"error": error, "problems": problems}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse(error_body(exc.error, exc.problems), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [problem(e["msg"], field=str(e["loc"][-1])) for e in exc.errors()]
        return JSONResponse(error_body("invalid request parameters", problems), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), []), status_code=exc.status_code, headers=exc.headers)


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
