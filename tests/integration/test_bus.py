"""The event bus against the real RabbitMQ: delivery, retry with delay, parking, malformed messages."""

from __future__ import annotations

import asyncio

import aio_pika

from shared.bus import EventBus
from shared.events import Event, ImageFailed, ImageRequested
from shared.settings import Settings
from tests.conftest import eventually


def requested(index: int = 0) -> ImageRequested:
    return ImageRequested(request_id="r1", index=index, url="http://example.com/a.jpg", file_id="f" * 32)


async def queue_depth(settings: Settings, name: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


async def test_published_event_reaches_the_subscribed_service(bus: EventBus) -> None:
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    await bus.subscribe("compressor", {ImageRequested: handler}, prefetch=4)
    await bus.publish(requested(7))

    await eventually(lambda: seen)
    assert seen == [
        requested(7).model_copy(update={"event_id": seen[0].event_id, "occurred_at": seen[0].occurred_at})
    ]
    assert isinstance(seen[0], ImageRequested) and seen[0].index == 7


async def test_a_failing_handler_is_retried_with_delay_then_succeeds(bus: EventBus) -> None:
    attempts: list[float] = []

    async def flaky(event: Event) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise RuntimeError("transient")

    await bus.subscribe("compressor", {ImageRequested: flaky}, prefetch=4)
    await bus.publish(requested())

    await eventually(lambda: len(attempts) == 3, timeout=10)
    await asyncio.sleep(0.5)
    assert len(attempts) == 3, "succeeded on the third attempt, so no fourth"
    # retry_delays_ms is [200, 400] in tests: each retry waited in its delay queue first
    assert attempts[1] - attempts[0] >= 0.18
    assert attempts[2] - attempts[1] >= 0.38


async def test_a_message_that_always_fails_is_parked_and_reported(bus: EventBus, settings: Settings) -> None:
    parked: list[tuple[Event, str]] = []

    async def broken(event: Event) -> None:
        raise ValueError("cannot handle this")

    async def on_parked(event: Event, reason: str) -> None:
        parked.append((event, reason))

    await bus.subscribe("compressor", {ImageRequested: broken}, prefetch=4, on_parked=on_parked)
    await bus.publish(requested(3))

    await eventually(lambda: parked, timeout=10)
    event, reason = parked[0]
    assert isinstance(event, ImageRequested) and event.index == 3
    assert "gave up after 3 attempts" in reason and "cannot handle this" in reason
    dead = bus.topology.dead_letter_queue("compressor")
    assert await eventually(lambda: queue_depth(settings, dead)) == 1


async def test_a_malformed_message_is_parked_without_stopping_the_consumer(
    bus: EventBus, settings: Settings
) -> None:
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    await bus.subscribe("status", {ImageFailed: handler}, prefetch=4)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(bus.topology.exchange)
        await exchange.publish(aio_pika.Message(b"{not json"), routing_key=ImageFailed.routing_key)
        await exchange.publish(
            aio_pika.Message(b'{"type": "ImageFailed"}'), routing_key=ImageFailed.routing_key
        )
    await bus.publish(ImageFailed(request_id="r1", index=0, url="http://x/", reason="404"))

    await eventually(lambda: seen)
    assert [type(e) for e in seen] == [ImageFailed]
    assert await eventually(lambda: queue_depth(settings, bus.topology.dead_letter_queue("status"))) == 2
