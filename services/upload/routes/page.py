"""The web page: / (upload) and /r/{id} (one request's live progress, bookmarkable), one static app.

Plain HTML, CSS and a JavaScript module under services/upload/web/, served as they are: nothing to build.
The page talks to the same API as everyone else (POST /upload, GET /status/{id}/events, GET /output/{id}).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"
STATIC_PATH = "/static"

router = APIRouter(include_in_schema=False)

# Scripts and styles from this server only; images from anywhere (the "before" thumbnails are the
# uploader's own URLs); no framing.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src * data:; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


@router.get("/")
@router.get("/r/{request_id}")
async def page() -> FileResponse:
    return FileResponse(WEB / "index.html", headers=HEADERS)


static_files = StaticFiles(directory=WEB)
