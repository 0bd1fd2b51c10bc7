"""The few lines `make run` prints once everything answers: where to look for what."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_API = "http://127.0.0.1:8000"  # the CLI's default (cli/api.py)


@dataclass(frozen=True)
class Where:
    api: str  # base URL of the API
    console: str | None  # the RabbitMQ console, None when it could not be turned on
    amqp_url: str
    vhost: str
    bus_prefix: str
    mail: str  # a folder of .eml files, or the SMTP server
    logs: str  # where the services' logs go
    database_log: Path | None


def banner(where: Where) -> str:
    user = urlsplit(where.amqp_url).username or "guest"
    console = (
        f"{where.console}#/queues  (sign in as {user}; vhost {where.vhost}; filter by {where.bus_prefix}.)"
        if where.console
        else "off: run `rabbitmq-plugins enable rabbitmq_management` (see README, Troubleshooting)"
    )
    logs = where.logs + (f"; database: {_short(where.database_log)}" if where.database_log else "")
    cli = _short(Path(sys.executable).parent / "imagepipe")
    lines = [
        ("page", f"{where.api}/"),
        ("API docs", f"{where.api}/docs"),
        ("console", console),
        ("mail", where.mail),
        ("logs", logs),
        ("try", f"{cli} upload samples/products.csv --email you@example.com --wait{_url(where.api)}"),
    ]
    rule = "─" * 78
    body = "\n".join(f"  {name:<9} {value}" for name, value in lines)
    return f"{rule}\n imagepipe is running. Ctrl-C stops everything it started.\n{body}\n{rule}"


def _url(api: str) -> str:
    """The CLI's --url, unless it is the CLI's default."""
    return "" if api == DEFAULT_API else f" --url {api}"


def _short(path: Path | None) -> str:
    """A path relative to the current folder when it is inside it, as people type it."""
    if path is None:
        return ""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)
