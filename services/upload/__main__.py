"""API gateway: `python -m services.upload`."""

from __future__ import annotations

import uvicorn

from services.upload.app import create_app
from shared.logging import configure_logging
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging("upload", settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",  # as every service (shared/runtime.py)
        log_config=None,  # keep our structured logging
        access_log=False,  # middleware.AccessLog writes it, with the request_id
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )


if __name__ == "__main__":
    main()
