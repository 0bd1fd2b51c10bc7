"""`make run`: the whole system on one machine, in the foreground, until Ctrl-C or SIGTERM.

Starts RabbitMQ if none answers, SecantusDB on disk under the data folder when IMAGEPIPE_MONGO_URL is not
set, a local origin serving sample images, and the four services (IMAGEPIPE_COMPRESSORS compressor
processes). Mail goes to .eml files under the data folder unless IMAGEPIPE_SMTP_HOST is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import structlog

from localrun.broker import ensure_rabbitmq
from localrun.samples import ensure_samples, serve_directory
from localrun.supervisor import (
    Supervisor,
    child_env,
    free_port,
    secantus_argv,
    secantus_url,
    wait_for_port,
)
from shared.logging import configure_logging
from shared.settings import get_settings

log = structlog.get_logger()
SAMPLE_ORIGIN_PORT = 8001


async def main() -> None:
    settings = get_settings()
    configure_logging("make-run", settings.log_level, json=False)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(IMAGEPIPE_DATA_DIR=str(data_dir))

    if "IMAGEPIPE_FETCH_ALLOW_PRIVATE" not in os.environ:
        env["IMAGEPIPE_FETCH_ALLOW_PRIVATE"] = "true"
        log.warning(
            "fetching_private_addresses_allowed",
            why="the sample CSV's images are served from 127.0.0.1",
            disable="set IMAGEPIPE_FETCH_ALLOW_PRIVATE=false",
        )

    started_rabbitmq = ensure_rabbitmq(settings.amqp_url)
    supervisor = Supervisor(env)
    if not settings.mongo_url:
        port = free_port()
        supervisor.start("secantusdb", secantus_argv(data_dir / "db", port))
        wait_for_port("127.0.0.1", port, 60, "SecantusDB")
        env["IMAGEPIPE_MONGO_URL"] = secantus_url(port)
        log.info("secantusdb_started", storage=str(data_dir / "db"), port=port)

    origin = await serve_directory(ensure_samples(data_dir / "samples"), "127.0.0.1", SAMPLE_ORIGIN_PORT)
    supervisor.start_services(settings.compressors)
    log.info(
        "imagepipe_running",
        api=settings.base_url,
        docs=f"{settings.base_url}/docs",
        sample_images=f"http://127.0.0.1:{SAMPLE_ORIGIN_PORT}/images/",
        mail=str(data_dir / "mail") if not settings.smtp_host else settings.smtp_host,
        compressors=settings.compressors,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        supervisor.poll()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)

    log.info("stopping")
    await asyncio.to_thread(supervisor.stop_all, settings.shutdown_grace + 5)
    await origin.cleanup()
    if started_rabbitmq:
        await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "stop"], check=False)
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
