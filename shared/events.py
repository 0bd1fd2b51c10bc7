"""Integration events: small immutable records, named in the past tense, versioned.

Each event class carries its routing key; `parse_event` turns a message body back into the right class.
Adding a field with a default is a compatible change; anything else gets a new `version`. Consumers ignore
fields they do not know, and read every version still in flight.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.image_options import ImageOptions


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    routing_key: ClassVar[str]
    version: int = 1
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    request_id: str
    occurred_at: datetime = Field(default_factory=_now)


class ImageEvent(Event):
    """About one image of a request: the `index`-th URL (0-based, in CSV order)."""

    index: int
    url: str


class ImageRequested(ImageEvent):
    """The upload accepted a request; this image must be compressed.

    Version 2 carries the request's image `options`. A version 1 message (published before the upgrade,
    still in flight) has none and reads as the defaults, which is what it meant; a consumer still on
    version 1 reads a version 2 message too, ignoring the options, so compressors are upgraded before
    the upload service (docs/architecture.md).
    """

    routing_key: ClassVar[str] = "image.requested"
    type: Literal["ImageRequested"] = "ImageRequested"
    version: int = 2
    file_id: str  # where the output goes: deterministic, so a redelivery finds it instead of orphaning one
    # A URL repeated in one request: the index of its first occurrence, which is the one fetched; this one
    # shares its file_id (which includes the request's options) and copies its outcome. None for a first
    # (or only) occurrence. Compressors that predate the field ignore it and fetch the URL again, which is
    # slower but just as correct.
    duplicate_of: int | None = None
    options: ImageOptions = Field(default_factory=ImageOptions)


class ImageCompressed(ImageEvent):
    routing_key: ClassVar[str] = "image.compressed"
    type: Literal["ImageCompressed"] = "ImageCompressed"
    file_id: str
    content_type: str
    input_bytes: int
    output_bytes: int
    kept_original: bool = False  # re-encoding would have grown the image, so its original bytes are kept
    # Added with image options (defaults: unknown, as from a compressor that predates them).
    width: int | None = None  # of the output
    height: int | None = None
    quality: int | None = None  # the encoder quality used (None for a kept original or lossless output)
    score: float | None = None  # with quality=auto: the SSIMULACRA2 score the chosen quality measured


class ImageFailed(ImageEvent):
    routing_key: ClassVar[str] = "image.failed"
    type: Literal["ImageFailed"] = "ImageFailed"
    reason: str


class ImageSkipped(ImageEvent):
    """A compressor dropped the image unstarted, never fetched: its request is being cancelled."""

    routing_key: ClassVar[str] = "image.skipped"
    type: Literal["ImageSkipped"] = "ImageSkipped"
    reason: str


class RequestCompleted(Event):
    """Every image of the request has an outcome. Published once per request, with a stable event_id.
    `status` (added with cancelling, compatibly) says how it ended: COMPLETED, or CANCELLED with
    `skipped` images never started."""

    routing_key: ClassVar[str] = "request.completed"
    type: Literal["RequestCompleted"] = "RequestCompleted"
    total_images: int
    compressed: int
    failed: int
    status: Literal["COMPLETED", "CANCELLED"] = "COMPLETED"
    skipped: int = 0


class NotificationRequested(Event):
    """Someone asked explicitly (POST /webhook-completed) for the completion notice to be sent again."""

    routing_key: ClassVar[str] = "notification.requested"
    type: Literal["NotificationRequested"] = "NotificationRequested"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        ImageRequested,
        ImageCompressed,
        ImageFailed,
        ImageSkipped,
        RequestCompleted,
        NotificationRequested,
    )
}


class MalformedEvent(ValueError):
    """A message body that is not a known event: it is parked, never retried."""


def parse_event(body: bytes) -> Event:
    import json

    try:
        raw = json.loads(body)
        cls = EVENT_TYPES[raw["type"]]
        return cls.model_validate(raw)
    except Exception as exc:  # any shape problem is the same problem: the message is unusable
        raise MalformedEvent(f"unparseable event: {exc}"[:500]) from exc
