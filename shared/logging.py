"""Structured logging, carrying the request_id bound by whoever handles it.

Two renderings of the same events: JSON lines for machines (the default of every service, what compose and
Kubernetes collect), and one aligned line per event for people (`IMAGEPIPE_LOG_JSON=false`, what `make run`
uses): time, level, service, event, then key=value.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    renderer: structlog.types.Processor = structlog.processors.JSONRenderer() if json else human_renderer()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,  # request_id, event_id bound per message / HTTP request
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True)
        if json
        else structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, _add_service(service), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route the standard library's loggers (aio-pika, uvicorn, pymongo) through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, _add_service(service)],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "pymongo"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def human_renderer() -> structlog.dev.ConsoleRenderer:
    """`12:00:01 info    compressor    image_compressed           request_id=... bytes_in=...`"""

    def column(key: str, width: int = 0, *, named: bool = False) -> structlog.dev.Column:
        formatter = structlog.dev.KeyValueColumnFormatter(
            key_style="" if named else None, value_style="", reset_style="", value_repr=str, width=width
        )
        return structlog.dev.Column(key, formatter)

    columns = [
        column("timestamp"),
        column("level", 7),
        column("service", 13),
        column("event", 26),
        column("request_id", named=True),  # first of the key=values: what a reader follows
        column("", named=True),
    ]
    return structlog.dev.ConsoleRenderer(columns=columns, exception_formatter=structlog.dev.plain_traceback)


def _add_service(service: str) -> structlog.types.Processor:
    def add(_: object, __: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add


log = structlog.get_logger()
