"""`make run`: the whole system on one machine, in the foreground, until Ctrl-C or SIGTERM.

Starts RabbitMQ if none answers (and turns its console on), SecantusDB on disk under the data folder when
IMAGEPIPE_MONGO_URL is not set, a local origin serving sample images, and the four services
(IMAGEPIPE_COMPRESSORS compressor processes). Mail goes to .eml files under the data folder unless
IMAGEPIPE_SMTP_HOST is set. Every log line, ours and the services', is in one format: for people unless
IMAGEPIPE_LOG_JSON=true. Once the API answers, a banner says where to look for what.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

from localrun.banner import Where, banner
from localrun.broker import ensure_console, ensure_rabbitmq, vhost
from localrun.samples import ensure_samples, serve_directory
from localrun.supervisor import (
    Supervisor,
    child_env,
    free_port,
    port_open,
    secantus_argv,
    secantus_url,
    wait_for_port,
)
from shared.logging import configure_logging
from shared.runtime import wait_until_set
from shared.settings import Settings, get_settings

log = structlog.get_logger()
SAMPLE_ORIGIN_PORT = 8001
DEFAULT_DATA_DIR = Path(Settings.model_fields["data_dir"].default)


async def main() -> None:
    settings = get_settings()
    # One format for every line: people's, unless IMAGEPIPE_LOG_JSON says otherwise (then JSON everywhere).
    json_logs = settings.log_json if "IMAGEPIPE_LOG_JSON" in os.environ else False
    configure_logging("make-run", settings.log_level, json=json_logs)
    another = f"IMAGEPIPE_PORT={settings.port + 100} IMAGEPIPE_DATA_DIR=var2 make run"
    if port_open(settings.host, settings.port):
        raise SystemExit(
            f"Port {settings.port} is in use (another `make run`?): stop it, or start this one beside it "
            f"with a port and a data folder of its own: {another}"
        )
    data_dir = settings.data_dir.resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    lock = _lock(data_dir, another)  # noqa: F841 (held until this process ends)
    bus_prefix = _bus_prefix(settings, data_dir)
    env = child_env(
        IMAGEPIPE_DATA_DIR=str(data_dir),
        IMAGEPIPE_LOG_JSON=str(json_logs).lower(),
        IMAGEPIPE_BUS_PREFIX=bus_prefix,
    )
    if "IMAGEPIPE_FETCH_ALLOW_PRIVATE" not in os.environ:
        env["IMAGEPIPE_FETCH_ALLOW_PRIVATE"] = "true"
        log.warning(
            "fetching_private_addresses_allowed",
            why="the sample CSV's images are served from 127.0.0.1",
            disable="set IMAGEPIPE_FETCH_ALLOW_PRIVATE=false",
        )

    started_rabbitmq = ensure_rabbitmq(settings.amqp_url)
    console = ensure_console(settings.amqp_url)
    supervisor = Supervisor(env)
    database_log = _start_database(supervisor, settings, data_dir, env)
    origin = await _serve_samples(data_dir)
    supervisor.start_services(settings.compressors)
    await asyncio.to_thread(wait_for_port, settings.host, settings.port, 60, "the API")
    mail = (
        str(data_dir / "mail") + " (.eml files)" if not settings.smtp_host else f"SMTP {settings.smtp_host}"
    )
    logs = "this terminal, " + (
        "JSON lines" if json_logs else "one line per event (IMAGEPIPE_LOG_JSON=true: JSON)"
    )
    where = Where(
        settings.base_url, console, settings.amqp_url, vhost(settings.amqp_url), bus_prefix, mail, logs,
        database_log,
    )  # fmt: skip
    print(banner(where), file=sys.stderr, flush=True)

    await _supervise(supervisor)
    log.info("stopping")
    await asyncio.to_thread(supervisor.stop_all, settings.shutdown_grace + 5)
    if origin is not None:
        await origin.cleanup()
    if started_rabbitmq:
        await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "stop"], check=False)
    log.info("stopped")


def _lock(data_dir: Path, another: str) -> IO[str]:
    """One `make run` per data folder: a second would open the same database files."""
    lock = (data_dir / "make-run.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(
            f"Another `make run` is using {data_dir}: stop it, or give this one its own port and folder: "
            f"{another}"
        ) from None
    return lock


def _bus_prefix(settings: Settings, data_dir: Path) -> str:
    """The queues belong to the database: a `make run` on another data folder gets queues of its own on the
    shared broker, so two running side by side never take each other's messages (unless told otherwise)."""
    if "IMAGEPIPE_BUS_PREFIX" in os.environ or settings.mongo_url or data_dir == DEFAULT_DATA_DIR.resolve():
        return settings.bus_prefix
    return f"{settings.bus_prefix}-{data_dir.name}-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:6]}"


def _start_database(
    supervisor: Supervisor, settings: Settings, data_dir: Path, env: dict[str, str]
) -> Path | None:
    """SecantusDB under the data folder, unless IMAGEPIPE_MONGO_URL names a database. Its own log, in its
    own format, goes to a file: the terminal keeps one format."""
    if settings.mongo_url:
        return None
    port = free_port()
    database_log = data_dir / "logs" / "secantusdb.log"
    supervisor.start("secantusdb", secantus_argv(data_dir / "db", port), log_file=database_log)
    wait_for_port("127.0.0.1", port, 60, "SecantusDB")
    env["IMAGEPIPE_MONGO_URL"] = secantus_url(port)
    log.info("secantusdb_started", storage=str(data_dir / "db"), port=port)
    return database_log


async def _serve_samples(data_dir: Path) -> web.AppRunner | None:
    if port_open("127.0.0.1", SAMPLE_ORIGIN_PORT):
        log.warning(
            "sample_origin_port_busy",
            port=SAMPLE_ORIGIN_PORT,
            effect="samples/products.csv's images come from whatever serves that port",
        )
        return None
    return await serve_directory(ensure_samples(data_dir / "samples"), "127.0.0.1", SAMPLE_ORIGIN_PORT)


async def _supervise(supervisor: Supervisor) -> None:
    """Restart what dies, until Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        supervisor.poll()
        await wait_until_set(stop, 0.5)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
