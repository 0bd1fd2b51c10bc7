"""The local RabbitMQ: use the one that answers, or start the machine's server; and its console.

`make run` turns on the management plugin (the web console) of a local broker: `rabbitmq-plugins enable` is
idempotent, and skipped when the console already answers (it takes seconds).
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import unquote, urlsplit

import structlog

from localrun.supervisor import port_open, wait_for_port

log = structlog.get_logger()

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CONSOLE_PORT = 15672

INSTALL_HINT = """RabbitMQ is not installed, and `make run` needs a broker. Install it, then run `make run` again:
  Debian/Ubuntu:  sudo apt-get install -y rabbitmq-server
  macOS:          brew install rabbitmq && brew services start rabbitmq
Or point IMAGEPIPE_AMQP_URL at a broker running elsewhere."""


def _host_port(amqp_url: str) -> tuple[str, int]:
    parts = urlsplit(amqp_url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def vhost(amqp_url: str) -> str:
    """The virtual host named by an AMQP URL ("/" when the path is empty)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def ensure_rabbitmq(amqp_url: str) -> bool:
    """True when we had to start the local server (so the caller stops it when done)."""
    host, port = _host_port(amqp_url)
    if port_open(host, port):
        return False
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"RabbitMQ does not answer at {host}:{port}; start it or set IMAGEPIPE_AMQP_URL")
    if not shutil.which("rabbitmq-server"):
        raise SystemExit(INSTALL_HINT)
    log.info("starting_rabbitmq", command="rabbitmq-server -detached")
    subprocess.run(["rabbitmq-server", "-detached"], check=True)
    wait_for_port(host, port, 90, "RabbitMQ")
    return True


def ensure_console(
    amqp_url: str, *, node: str | None = None, port: int = CONSOLE_PORT, env: dict[str, str] | None = None
) -> str | None:
    """The console's URL, once it answers. A local broker gets its management plugin turned on (`node`
    names a node other than the default one); a remote one is not ours to configure, so its usual console
    address is given as it is. None if the console cannot be turned on."""
    host, _ = _host_port(amqp_url)
    url = f"http://{'127.0.0.1' if host == 'localhost' else host}:{port}/"
    if host not in LOCAL_HOSTS or port_open(host, port):
        return url
    plugins = shutil.which("rabbitmq-plugins")
    if plugins is None:
        log.warning("console_unavailable", why="rabbitmq-plugins not found")
        return None
    log.info("enabling_rabbitmq_console", command="rabbitmq-plugins enable rabbitmq_management")
    argv = [plugins, *(["-n", node] if node else []), "enable", "rabbitmq_management"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    if done.returncode != 0:
        log.warning("console_unavailable", error=(done.stderr or done.stdout).strip()[-300:])
        return None
    try:
        wait_for_port(host, port, 30, "the RabbitMQ console")
    except RuntimeError as exc:
        log.warning("console_unavailable", error=str(exc))
        return None
    return url
