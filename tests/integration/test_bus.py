"""The event bus against the real RabbitMQ: delivery, retry with delay, parking, malformed messages."""

from __future__ import annotations

import asyncio
import itertools

import aio_pika
import pytest

from shared.bus import CRASH_LIMIT, DELIVERY_LIMIT, BrokerUnavailable, EventBus
from shared.events import Event, ImageFailed, ImageRequested, RequestCompleted
from shared.mongo import StorageUnavailable
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
    parked_queue = bus.topology.parking_lot("compressor")
    assert await eventually(lambda: queue_depth(settings, parked_queue)) == 1
    assert await queue_depth(settings, bus.topology.dead_letter_queue("compressor")) == 0


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
    assert await eventually(lambda: queue_depth(settings, bus.topology.parking_lot("status"))) == 2


async def test_an_outage_is_retried_past_every_retry_delay_and_never_parked(
    bus: EventBus, settings: Settings
) -> None:
    attempts: list[float] = []
    parked: list[Event] = []

    async def database_down_for_a_while(event: Event) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) <= 6:  # far more failures than retry delays ([200, 400] in tests)
            raise StorageUnavailable("ServerSelectionTimeoutError: no server")

    async def on_parked(event: Event, reason: str) -> None:
        parked.append(event)

    await bus.subscribe(
        "compressor", {ImageRequested: database_down_for_a_while}, prefetch=4, on_parked=on_parked
    )
    await bus.publish(requested())

    await eventually(lambda: len(attempts) == 7, timeout=15)
    await asyncio.sleep(0.5)
    assert (len(attempts), parked) == (7, [])
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.18 and all(gap >= 0.38 for gap in gaps[1:]), gaps  # backing off to the longest
    assert await queue_depth(settings, bus.topology.parking_lot("compressor")) == 0


async def test_a_parked_message_whose_outcome_cannot_be_recorded_yet_is_settled_later(
    bus: EventBus, settings: Settings
) -> None:
    handled: list[Event] = []
    settled: list[str] = []

    async def broken(event: Event) -> None:
        handled.append(event)
        raise ValueError("cannot handle this")

    async def on_parked(event: Event, reason: str) -> None:
        settled.append(reason)
        if len(settled) < 3:
            raise BrokerUnavailable("ImageFailed not published: the broker is away")

    await bus.subscribe("compressor", {ImageRequested: broken}, prefetch=4, on_parked=on_parked)
    await bus.publish(requested())

    await eventually(lambda: len(settled) == 3, timeout=15)
    assert await eventually(lambda: queue_depth(settings, bus.topology.parking_lot("compressor"))) == 1
    assert len(handled) == 3, "once given up on, the handler never runs again"
    assert all("gave up after 3 attempts" in reason for reason in settled)


async def given_back(bus: EventBus, settings: Settings, event: Event, times: int | None) -> int:
    """Publish `event` to the notifier's queue and have a raw consumer give it back `times` times (None:
    until the broker's delivery limit dead-letters it), as a consumer that dies with it each time would."""
    first = EventBus(settings)  # declares the topology, then leaves the queue to the raw consumer
    await first.connect()
    await first.subscribe("notifier", {type(event): ignore}, prefetch=1)
    await first.close()
    await bus.publish(event)
    returned = 0
    async with await aio_pika.connect(settings.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(bus.topology.queue("notifier"))
        while times is None or returned < times:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            await message.nack(requeue=True)
            returned += 1
    return returned


async def ignore(event: Event) -> None:
    pass


async def test_a_message_that_keeps_killing_its_consumer_is_settled_without_running_it_again(
    bus: EventBus, settings: Settings
) -> None:
    handled: list[Event] = []
    parked: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    async def on_parked(event: Event, reason: str) -> None:
        parked.append(reason)

    completed = RequestCompleted(request_id="r1", total_images=1, compressed=1, failed=0)
    assert await given_back(bus, settings, completed, CRASH_LIMIT) == CRASH_LIMIT
    await bus.subscribe("notifier", {RequestCompleted: handler}, prefetch=1, on_parked=on_parked)
    await eventually(lambda: parked, timeout=10)
    assert "consumer crashes" in parked[0] and handled == []
    assert await eventually(lambda: queue_depth(settings, bus.topology.parking_lot("notifier"))) == 1


async def test_what_the_broker_dead_letters_is_settled_like_the_rest(
    bus: EventBus, settings: Settings
) -> None:
    # The broker's delivery limit dead-letters it, bypassing the bus's own handling.
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    completed = RequestCompleted(request_id="r1", total_images=1, compressed=1, failed=0)
    assert await given_back(bus, settings, completed, None) == DELIVERY_LIMIT + 1

    parked: list[tuple[Event, str]] = []

    async def on_parked(event: Event, reason: str) -> None:
        parked.append((event, reason))

    await bus.subscribe("notifier", {RequestCompleted: handler}, prefetch=1, on_parked=on_parked)
    await eventually(lambda: parked, timeout=10)
    ((event, reason),) = parked
    assert event.event_id == completed.event_id and "dead-lettered by the broker" in reason
    assert handled == []
    assert await eventually(lambda: queue_depth(settings, bus.topology.parking_lot("notifier"))) == 1


async def test_a_publish_no_queue_takes_is_a_failed_publish(bus: EventBus) -> None:
    # Nothing subscribes to ImageRequested under this test's prefix: the broker returns the message.
    with pytest.raises(BrokerUnavailable, match="not published"):
        await bus.publish(requested())
