"""Event contracts: round trips, immutability, and malformed bodies."""

from __future__ import annotations

import pydantic
import pytest

from shared.events import (
    EVENT_TYPES,
    ImageCompressed,
    ImageFailed,
    ImageRequested,
    MalformedEvent,
    NotificationRequested,
    RequestCompleted,
    parse_event,
)

EXAMPLES = [
    ImageRequested(request_id="r", index=0, url="https://a/b.jpg", file_id="f" * 32),
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
    RequestCompleted(request_id="r", total_images=3, compressed=2, failed=1),
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
