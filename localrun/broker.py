"""The local RabbitMQ: use the one that answers, or start the machine's server."""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlsplit

import structlog

from localrun.supervisor import port_open, wait_for_port

log = structlog.get_logger()


def ensure_rabbitmq(amqp_url: str) -> bool:
    """True when we had to start the local server (so the caller stops it when done)."""
    parts = urlsplit(amqp_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if port_open(host, port):
        return False
    if host not in ("127.0.0.1", "localhost") or not shutil.which("rabbitmq-server"):
        raise SystemExit(f"RabbitMQ does not answer at {host}:{port}; start it or set IMAGEPIPE_AMQP_URL")
    log.info("starting_rabbitmq", command="rabbitmq-server -detached")
    subprocess.run(["rabbitmq-server", "-detached"], check=True)
    wait_for_port(host, port, 90, "RabbitMQ")
    return True
