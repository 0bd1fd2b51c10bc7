"""Event contracts: round trips, immutability, and malformed bodies."""

from __future__ import annotations

from typing import ClassVar, Literal

import pydantic
import pytest

from shared.events import (
    EVENT_TYPES,
    Event,
    ImageCompressed,
    ImageFailed,
    ImageRequested,
    ImageSkipped,
    MalformedEvent,
    NotificationRequested,
    RequestCompleted,
    parse_event,
)
from shared.image_options import ImageOptions, OutputFormat

EXAMPLES = [
    ImageRequested(request_id="r", index=0, url="https://a/b.jpg", file_id="f" * 32),
    ImageRequested(
        request_id="r",
        index=0,
        url="https://a/b.jpg",
        file_id="f" * 32,
        options=ImageOptions(
            max_width=800, max_height=600, format=OutputFormat.AVIF, quality="auto", target=70
        ),
    ),
    ImageCompressed(
        request_id="r",
        index=1,
        url="https://a/c.jpg",
        file_id="f" * 32,
        content_type="image/jpeg",
        input_bytes=10,
        output_bytes=5,
    ),
    ImageFailed(request_id="r", index=2, url="https://a/d.jpg", reason="HTTP 404 from origin"),
    ImageSkipped(request_id="r", index=3, url="https://a/e.jpg", reason="cancelled before it was started"),
    RequestCompleted(request_id="r", total_images=3, compressed=2, failed=1),
    RequestCompleted(request_id="r", total_images=9, compressed=2, failed=1, status="CANCELLED", skipped=6),
    NotificationRequested(request_id="r"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_survives_the_wire(event: object) -> None:
    assert isinstance(event, pydantic.BaseModel)
    assert parse_event(event.model_dump_json().encode()) == event


def test_every_event_type_is_covered_and_routed_uniquely() -> None:
    assert {type(e).__name__ for e in EXAMPLES} == set(EVENT_TYPES)
    assert len({cls.routing_key for cls in EVENT_TYPES.values()}) == len(EVENT_TYPES)


def test_events_carry_identity_and_are_immutable() -> None:
    a, b = (ImageFailed(request_id="r", index=0, url="u", reason="x") for _ in range(2))
    assert a.event_id != b.event_id and a.version == 1 and a.occurred_at.tzinfo is not None
    with pytest.raises(pydantic.ValidationError):
        a.reason = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"type": "Unknown"}', b'{"type": "ImageFailed", "request_id": "r"}'],
)
def test_malformed_bodies_are_recognised(body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        parse_event(body)


def test_unknown_fields_from_a_newer_producer_are_ignored() -> None:
    body = (
        ImageFailed(request_id="r", index=0, url="u", reason="x")
        .model_dump_json()
        .replace("{", '{"extra": 1, ', 1)
    )
    assert isinstance(parse_event(body.encode()), ImageFailed)


# --- ImageRequested version 2 (image options) during a rolling upgrade ------------------------------------

# Bodies exactly as the release before image options published them.
V1_IMAGE_REQUESTED = (
    b'{"version": 1, "event_id": "e1", "request_id": "r", "occurred_at": "2026-11-30T10:00:00Z", '
    b'"index": 4, "url": "https://a/b.jpg", "type": "ImageRequested", "file_id": "' + b"f" * 32 + b'"}'
)
V1_IMAGE_COMPRESSED = (
    b'{"version": 1, "event_id": "e2", "request_id": "r", "occurred_at": "2026-11-30T10:00:01Z", '
    b'"index": 4, "url": "https://a/b.jpg", "type": "ImageCompressed", "file_id": "' + b"f" * 32 + b'", '
    b'"content_type": "image/jpeg", "input_bytes": 100, "output_bytes": 40, "kept_original": false}'
)


class ImageRequestedV1(Event):
    """The consumer's model as it was before image options: what a compressor not yet upgraded runs."""

    routing_key: ClassVar[str] = "image.requested"
    type: Literal["ImageRequested"] = "ImageRequested"
    index: int
    url: str
    file_id: str


class ImageCompressedV1(Event):
    routing_key: ClassVar[str] = "image.compressed"
    type: Literal["ImageCompressed"] = "ImageCompressed"
    index: int
    url: str
    file_id: str
    content_type: str
    input_bytes: int
    output_bytes: int
    kept_original: bool = False


def test_a_version_1_image_request_in_flight_reads_as_the_default_options() -> None:
    event = parse_event(V1_IMAGE_REQUESTED)
    assert isinstance(event, ImageRequested)
    assert (event.version, event.index, event.file_id, event.options) == (1, 4, "f" * 32, ImageOptions())
    assert event.options.is_default()


def test_a_consumer_still_on_version_1_reads_a_version_2_image_request() -> None:
    options = ImageOptions(max_width=800, format=OutputFormat.WEBP, quality=80)
    new = ImageRequested(request_id="r", index=4, url="https://a/b.jpg", file_id="f" * 32, options=options)
    assert new.version == 2
    old = ImageRequestedV1.model_validate_json(new.model_dump_json())
    assert (old.request_id, old.index, old.url, old.file_id) == ("r", 4, "https://a/b.jpg", "f" * 32)


def test_image_compressed_gained_only_fields_with_defaults() -> None:
    old = parse_event(V1_IMAGE_COMPRESSED)
    assert isinstance(old, ImageCompressed)
    assert (old.width, old.height, old.quality, old.score) == (None, None, None, None)
    new = old.model_copy(update={"width": 800, "height": 600, "quality": 37, "score": 61.5})
    assert parse_event(new.model_dump_json().encode()) == new
    assert ImageCompressedV1.model_validate_json(new.model_dump_json()).output_bytes == 40


def test_options_in_a_message_are_validated_like_at_upload() -> None:
    body = V1_IMAGE_REQUESTED.replace(b'"version": 1', b'"version": 2, "options": {"quality": 0}')
    with pytest.raises(MalformedEvent):
        parse_event(body)


def test_a_completion_from_before_cancelling_reads_as_completed() -> None:
    old = b'{"type": "RequestCompleted", "request_id": "r", "total_images": 1, "compressed": 1, "failed": 0}'
    completed = parse_event(old)
    assert isinstance(completed, RequestCompleted)
    assert (completed.status, completed.skipped) == ("COMPLETED", 0)
