"""One error shape for every rejection the API makes.

{"error": "<summary>", "problems": [{"row": 3, "column": "Product Name", "field": null, "reason": "..."}]}
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared.mongo import StorageError


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

    @app.exception_handler(StorageError)
    async def storage_unavailable(_: Request, exc: StorageError) -> JSONResponse:
        # A read while the database is down: say so, and when to retry, rather than a bare 500.
        error = ApiError(503, "the database is unavailable; try again shortly")
        return await api_error(_, error)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), []), status_code=exc.status_code, headers=exc.headers)
