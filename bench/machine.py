"""What the numbers were measured on: CPU, cores, memory, Python and the versions that matter."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from PIL import features

PACKAGES = ("pillow", "aio-pika", "pymongo", "fastapi", "uvicorn", "aiohttp", "pydantic", "SecantusDB")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_memory() -> int:
    """Bytes of RAM (MemTotal), 0 if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def versions(rabbitmq: str | None = None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["libjpeg-turbo"] = features.version("libjpeg_turbo") or "no"
    found["libwebp"] = features.version("webp") or "no"
    if rabbitmq:
        found["RabbitMQ"] = rabbitmq
    return found


def describe(rabbitmq: str | None = None) -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "ram_bytes": total_memory(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(rabbitmq),
    }
