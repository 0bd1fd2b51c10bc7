"""The parking lots (`<prefix>.<service>.parked`, shared/bus.py) for the people who repair what got stuck:
look at what is parked and why, send messages back to their service's queue, or drop them.

It speaks AMQP to the broker the services use (no management API, so no second URL or credentials), and
goes through a parking lot once per command: each message is taken, then put back at the end of the lot
(kept), published to its service's queue (replayed) or dropped, and only then acknowledged. Nothing is
ever returned to the queue unacknowledged, because a quorum queue counts that as a redelivery, and
RabbitMQ 4 drops a message redelivered 20 times. A crash midway leaves at worst a duplicate behind, which
the idempotent consumers absorb.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelNotFoundEntity

from shared.bus import GIVEN_UP, PARK_REASON, PARKED_AT, ROUTING_KEY, BrokerUnavailable, Topology
from shared.settings import Settings

# The services that consume events, so have a parking lot: those with a ROUTES table (a test checks).
CONSUMERS = ("compressor", "status", "notifier")
# What a replay clears: the failure history, so the message gets every attempt again, as if new.
FAILURE_HEADERS = (
    "x-attempt",
    "x-outages",
    "x-last-error",
    "x-delivery-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    GIVEN_UP,
    PARK_REASON,
    PARKED_AT,
)
REPLAYS = "x-replays"  # header: how often it was replayed


class Action(StrEnum):
    KEEP = "keep"
    REPLAY = "replay"
    DROP = "drop"


@dataclass(frozen=True)
class ParkedMessage:
    service: str
    position: int  # 1-based, in the order of the lot
    message_id: str  # the event's id
    event_type: str
    routing_key: str
    request_id: str
    reason: str  # why the bus gave up on it
    kind: str  # which kind of giving up (shared/bus.py PARK_REASONS)
    attempts: int  # handler attempts that failed before it was given up on (retries + 1)
    last_error: str
    parked_at: str
    replays: int
    headers: dict[str, Any]
    body: bytes

    def payload(self) -> Any:
        """The event as JSON, or its raw text if it is not JSON (a malformed message)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body.decode("utf-8", "replace")


Decide = Callable[[ParkedMessage], Action]


class ParkingLots:
    """`async with ParkingLots(settings) as lots:` then `walk`, `count` or `purge` a service's lot."""

    def __init__(self, settings: Settings) -> None:
        self.topology = Topology(settings.bus_prefix, tuple(settings.retry_delays_ms))
        self._url = settings.amqp_url
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> ParkingLots:
        # A failed connect is raised as BrokerUnavailable; the driver's own log line would say it twice.
        logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
        try:
            self._connection = await aio_pika.connect(self._url, timeout=10)
        except Exception as exc:  # the driver's many ways of saying "no broker there"
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def count(self, service: str) -> int:
        """Messages parked for `service`; 0 if it has never started (no parking lot yet)."""
        channel = await self._channel()
        try:
            queue = await channel.declare_queue(self.topology.parking_lot(service), passive=True)
        except ChannelNotFoundEntity:
            return 0
        count = queue.declaration_result.message_count or 0
        await channel.close()
        return count

    async def walk(self, service: str, decide: Decide) -> list[tuple[ParkedMessage, Action]]:
        """Go through `service`'s lot once, in order: each message is kept, replayed or dropped as
        `decide` says. Returns every message seen, with what was done to it."""
        total = await self.count(service)
        channel = await self._channel()
        lot = await channel.get_queue(self.topology.parking_lot(service), ensure=False)
        done: list[tuple[ParkedMessage, Action]] = []
        try:
            for position in range(1, total + 1):
                message = await lot.get(no_ack=False, fail=False)
                if message is None:  # someone else took it meanwhile
                    break
                parked = _parked(service, position, message)
                action = decide(parked)
                if action is Action.KEEP:
                    await _send(channel, message, self.topology.parking_lot(service), dict(parked.headers))
                elif action is Action.REPLAY:
                    await _send(channel, message, self.topology.queue(service), _fresh(parked))
                await message.ack()
                done.append((parked, action))
        finally:
            await channel.close()
        return done

    async def purge(self, service: str) -> int:
        """Drop everything parked for `service`; how many messages that was."""
        if not await self.count(service):
            return 0
        channel = await self._channel()
        lot = await channel.get_queue(self.topology.parking_lot(service), ensure=False)
        purged = await lot.purge()
        await channel.close()
        return purged.message_count or 0

    async def _channel(self) -> AbstractChannel:
        assert self._connection is not None, "use `async with`"
        return await self._connection.channel(publisher_confirms=True, on_return_raises=True)


async def _send(
    channel: AbstractChannel, message: AbstractIncomingMessage, queue: str, headers: dict[str, Any]
) -> None:
    """Publish a copy of `message` to `queue` and wait for the broker's confirm."""
    copy = aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        message_id=message.message_id,
        type=message.type,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await channel.default_exchange.publish(copy, routing_key=queue, mandatory=True)


def _fresh(parked: ParkedMessage) -> dict[str, Any]:
    """The headers of a replay: no failure history, so every attempt and retry is had again."""
    kept = {k: v for k, v in parked.headers.items() if k not in FAILURE_HEADERS}
    return {**kept, REPLAYS: parked.replays + 1}


def _parked(service: str, position: int, message: AbstractIncomingMessage) -> ParkedMessage:
    headers = {k: v for k, v in (message.headers or {}).items() if k != "x-delivery-count"}

    def text(name: str) -> str:
        value = headers.get(name)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")

    def number(name: str) -> int:
        value = headers.get(name)
        return int(value) if isinstance(value, int) else 0

    return ParkedMessage(
        service=service,
        position=position,
        message_id=message.message_id or "",
        event_type=message.type or "",
        routing_key=text(ROUTING_KEY),
        request_id=text("request_id"),
        reason=text(GIVEN_UP),
        kind=text(PARK_REASON),
        attempts=number("x-attempt") + 1,
        last_error=text("x-last-error"),
        parked_at=text(PARKED_AT),
        replays=number(REPLAYS),
        headers=headers,
        body=message.body,
    )
