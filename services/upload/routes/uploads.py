"""POST /upload: a CSV of products and their image URLs in, a request id out."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from starlette.datastructures import UploadFile

from services.upload.csv_input import CsvRejected
from services.upload.deps import ApiKey, GatewayDep
from services.upload.errors import ApiError, problem
from services.upload.intake import form_problems, options_from_form, store_request
from shared.mongo import StorageError
from shared.repository import new_request_id

log = structlog.get_logger()
router = APIRouter()

UPLOADS = Counter("imagepipe_upload_requests_total", "Upload attempts, by outcome", ["outcome"])


@router.post("/upload", status_code=202, dependencies=[ApiKey])
async def upload(request: Request, gateway: GatewayDep) -> JSONResponse:
    settings = gateway.runtime.settings
    form = await request.form(max_files=1, max_fields=16)
    file = form.get("file")
    email = _text(form.get("email")) or request.query_params.get("email", "").strip()
    webhook_url = (
        _text(form.get("webhook_url")) or request.query_params.get("webhook_url", "").strip() or None
    )
    problems = form_problems(file, email, webhook_url, allow_private=settings.fetch_allow_private)
    options, option_problems = options_from_form(form, request.query_params)
    problems += option_problems
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

    request_id = new_request_id()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    repo = gateway.runtime.repo
    try:
        accepted = await store_request(repo, gateway.limits, request_id, file, email, webhook_url, options)
    except CsvRejected as exc:
        UPLOADS.labels("rejected").inc()
        await repo.discard(request_id)
        problems = [p.to_dict() for p in exc.problems]
        raise ApiError(exc.status_code, f"{exc}; nothing was queued", problems) from None
    except StorageError as exc:
        UPLOADS.labels("unavailable").inc()
        log.error("upload_storage_failed", error=str(exc)[:200])
        await repo.discard(request_id)
        raise ApiError(503, "storage is unavailable; nothing was accepted, try again shortly") from None
    gateway.relay.kick()
    UPLOADS.labels("accepted").inc()
    log.info("upload_accepted", products=accepted["total_products"], images=accepted["total_images"])
    links = gateway.runtime.links
    return JSONResponse(
        {
            "request_id": request_id,
            "status": accepted["status"],
            "status_url": links.status(request_id),
            "output_csv_url": links.output(request_id),
            "products": accepted["total_products"],
            "images": accepted["total_images"],
            "options": options.stored(),
        },
        status_code=202,
    )


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""
