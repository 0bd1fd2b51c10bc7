"""GET /image/{file_id}: one compressed image."""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from services.upload.deps import GatewayDep
from services.upload.errors import ApiError
from services.upload.openapi import errors, ok

router = APIRouter(tags=["images"])

FILE_ID = re.compile(r"^[0-9a-f]{32}$")


@router.get(
    "/image/{file_id}",
    summary="A compressed image",
    response_class=StreamingResponse,
    responses=ok("The image, with its real content type.", media_type="image/*", binary=True)
    | errors(404, 503),
)
async def image(file_id: str, gateway: GatewayDep) -> StreamingResponse:
    # Public by design: the id is an unguessable capability, and these links go out in CSVs and emails.
    download = await gateway.runtime.images.open(file_id) if FILE_ID.match(file_id) else None
    if download is None:
        raise ApiError(404, "no such image")
    return StreamingResponse(
        download.chunks,
        media_type=download.content_type,
        headers={
            "Content-Length": str(download.length),
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )
