"""The one event-bus building block: topology, confirmed publishing, and consuming with retry and parking.

Topology (all names start with `settings.bus_prefix`, so deployments sharing a broker stay apart):

    <prefix>.events                  topic exchange every event is published to
    <prefix>.<service>               one durable quorum queue per subscribing service
    <prefix>.<service>.retry.<N>ms   delay queues: a failed message waits N ms, then returns to its queue
    <prefix>.<service>.dead          parking lot for messages that failed every retry, or were malformed

A subscribing service declares its own queues and binds them to the events of its routing table (its
`ROUTES`: event type -> handler), so each subscription is written down once, beside its handlers.
Publishes are mandatory and confirmed: a message that no queue takes (its subscriber has never started)
comes back as a failed publish, to be tried again, rather than vanishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from shared.events import Event, MalformedEvent, parse_event
from shared.settings import Settings

log = structlog.get_logger()

# A message redelivered this often has killed (or been abandoned by) its consumer every time: we park it
# and report it instead of handing it to a handler again, so it cannot crash-loop the fleet. Handler errors
# do not count here: they go through the retry queues. The broker's own limit is a backstop above it.
CRASH_LIMIT = 5
DELIVERY_LIMIT = 20
# While the connection is being re-established its channels are closed; a publish waits this long for them
# to be restored rather than fail at once.
RECONNECT_WAIT_S = 30.0

# A service's routing table: which handler takes which event type. Handlers take their concrete event type
# (the bus only ever hands them that type), so the table's values are typed loosely. A service writes its
# table once, with the methods of its handler class (`HandlerMethods`), and `bind`s them when it starts.
Handler = Callable[[Any], Awaitable[None]]
Routes = Mapping[type[Event], Handler]
HandlerMethods = Mapping[type[Event], Callable[[Any, Any], Awaitable[None]]]
ParkedHook = Callable[[Event, str], Awaitable[None]]


def bind(methods: HandlerMethods, handlers: object) -> Routes:
    """A service's routing table, with its handler class's methods bound to the instance `handlers`."""
    return {event_type: functools.partial(method, handlers) for event_type, method in methods.items()}


class Publisher(Protocol):
    """What handlers need of the bus: publishing, each call returning once the broker has the messages."""

    async def publish(self, event: Event) -> None: ...

    async def publish_many(self, events: Iterable[Event]) -> None: ...


@dataclass(frozen=True)
class Topology:
    prefix: str
    retry_delays_ms: tuple[int, ...]

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.events"

    def queue(self, service: str) -> str:
        return f"{self.prefix}.{service}"

    def dead_letter_queue(self, service: str) -> str:
        return f"{self.queue(service)}.dead"

    def retry_queue(self, service: str, delay_ms: int) -> str:
        return f"{self.queue(service)}.retry.{delay_ms}ms"

    def queues(self, service: str) -> list[str]:
        """Every queue a subscribing service declares: its own, its parking lot and its delay queues."""
        retries = [self.retry_queue(service, delay) for delay in self.retry_delays_ms]
        return [self.queue(service), self.dead_letter_queue(service), *retries]


class EventBus:
    def __init__(self, settings: Settings) -> None:
        self.topology = Topology(settings.bus_prefix, tuple(settings.retry_delays_ms))
        self._url = settings.amqp_url
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------------------
    async def connect(self) -> None:
        # connect_robust reconnects by itself and re-declares what was declared, consumers included.
        self._connection = await aio_pika.connect_robust(self._url, reconnect_interval=1.0)
        # Returned (unroutable) messages raise in publish(): without it, mandatory=True changes nothing.
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await self._channel.declare_exchange(
            self.topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    @property
    def is_ready(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def stop_consuming(self, grace: float) -> None:
        """Take no new messages; give in-flight ones `grace` seconds, after which the broker requeues them."""
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()
        if self._in_flight:
            log.info("draining", in_flight=len(self._in_flight), grace_s=grace)
            _, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    # --- publishing -----------------------------------------------------------------------------------
    async def publish(self, event: Event) -> None:
        """Returns once the broker has confirmed the message (persisted to its queues); raises if it could
        not, including when no queue is bound to the event (aio_pika's DeliveryError)."""
        assert self._exchange is not None, "connect() first"
        await self._channel_ready()
        await self._exchange.publish(
            _message(event.model_dump_json().encode(), event, attempt=0),
            routing_key=event.routing_key,
            mandatory=True,
        )

    async def publish_many(self, events: Iterable[Event]) -> None:
        # Confirms are pipelined: many publishes in flight on one channel, each awaited for its confirm.
        await asyncio.gather(*(self.publish(e) for e in events))

    # --- consuming ------------------------------------------------------------------------------------
    async def subscribe(
        self, service: str, routes: Routes, *, prefetch: int, on_parked: ParkedHook | None = None
    ) -> None:
        """Declare `service`'s queues, bind them to the events in `routes`, and hand each event to its
        handler; a message is acknowledged only after its handler returns.

        A handler exception sends the message to the next retry queue; after the last one it is parked
        in the dead-letter queue and `on_parked` is told why. Malformed messages are parked at once.
        """
        assert self._connection is not None, "connect() first"
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await self._declare_queues(channel, service, routes)

        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._in_flight.add(task)
            try:
                await self._handle(service, message, routes, on_parked)
            except Exception:
                # Sending it to a retry queue failed (the broker is going away, or is half back): give it
                # back. Left unacknowledged on a channel that stays open, it would never be delivered again.
                log.exception("message_requeued", service=service)
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
            finally:
                self._in_flight.discard(task)

        tag = await queue.consume(on_message)
        self._consumers.append((queue, tag))

    async def _handle(
        self,
        service: str,
        message: AbstractIncomingMessage,
        routes: Routes,
        on_parked: ParkedHook | None,
    ) -> None:
        attempt = _header_int(message, "x-attempt")
        try:
            event = parse_event(message.body)
            handler = routes.get(type(event))
            if handler is None:  # bound once, since unbound: nothing here can handle it
                raise MalformedEvent(f"{type(event).__name__} is not handled by {service}")
        except MalformedEvent as exc:
            log.error("malformed_message_parked", service=service, reason=str(exc))
            await self._park(service, message, str(exc))
            await message.ack()
            return
        with structlog.contextvars.bound_contextvars(
            request_id=event.request_id, event_id=event.event_id, event_type=type(event).__name__
        ):
            deliveries = _header_int(message, "x-delivery-count")
            if deliveries >= CRASH_LIMIT:
                reason = f"delivered {deliveries} times without being acknowledged (consumer crashes)"
                await self._retry_or_park(
                    service, message, event, len(self.topology.retry_delays_ms), reason, on_parked
                )
                return
            try:
                await handler(event)
            except asyncio.CancelledError:
                raise  # shutdown: not acked, so the broker redelivers it
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:500]
                await self._retry_or_park(service, message, event, attempt, reason, on_parked)
            else:
                await message.ack()

    async def _retry_or_park(
        self,
        service: str,
        message: AbstractIncomingMessage,
        event: Event,
        attempt: int,
        reason: str,
        on_parked: ParkedHook | None,
    ) -> None:
        delays = self.topology.retry_delays_ms
        if attempt < len(delays):
            log.warning(
                "handler_failed_retrying", attempt=attempt + 1, delay_ms=delays[attempt], reason=reason
            )
            await self._default_publish(
                message, self.topology.retry_queue(service, delays[attempt]), attempt + 1, reason
            )
        else:
            log.error("handler_failed_parked", attempts=attempt + 1, reason=reason)
            # Parked first: if reporting fails, the redelivery may still succeed, and no success is
            # then shadowed by a failure already reported.
            await self._park(service, message, reason)
            if on_parked is not None:
                await on_parked(event, f"gave up after {attempt + 1} attempts: {reason}")
        await message.ack()

    async def _park(self, service: str, message: AbstractIncomingMessage, reason: str) -> None:
        attempt = _header_int(message, "x-attempt")
        await self._default_publish(message, self.topology.dead_letter_queue(service), attempt, reason)

    async def _default_publish(
        self, message: AbstractIncomingMessage, queue: str, attempt: int, reason: str
    ) -> None:
        assert self._channel is not None
        await self._channel_ready()
        copy = aio_pika.Message(
            body=message.body,
            headers={**(message.headers or {}), "x-attempt": attempt, "x-last-error": reason},
            content_type=message.content_type,
            message_id=message.message_id,
            type=message.type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._channel.default_exchange.publish(copy, routing_key=queue, mandatory=True)

    async def _channel_ready(self) -> None:
        assert self._channel is not None, "connect() first"
        async with asyncio.timeout(RECONNECT_WAIT_S):  # not wait_for: see runtime.wait_until_set
            await self._channel.ready()

    # --- topology -------------------------------------------------------------------------------------
    async def _declare_queues(
        self, channel: aio_pika.abc.AbstractChannel, service: str, routes: Routes
    ) -> AbstractQueue:
        t = self.topology
        exchange = await channel.declare_exchange(t.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        dead = t.dead_letter_queue(service)
        await channel.declare_queue(dead, durable=True, arguments={"x-queue-type": "quorum"})
        # Declared, not just looked up: only declared queues get their consumers back when the robust
        # connection reconnects; a queue from get_queue(ensure=False) would silently stop consuming.
        queue = await channel.declare_queue(
            t.queue(service),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            },
        )
        for event_cls in routes:
            await queue.bind(exchange, routing_key=event_cls.routing_key)
        for delay in t.retry_delays_ms:
            await channel.declare_queue(
                t.retry_queue(service, delay),
                durable=True,
                arguments={
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": t.queue(service),
                },
            )
        return queue


def _header_int(message: AbstractIncomingMessage, name: str) -> int:
    value = (message.headers or {}).get(name)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def _message(body: bytes, event: Event, attempt: int) -> aio_pika.Message:
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        type=type(event).__name__,
        timestamp=event.occurred_at,
        headers={"request_id": event.request_id, "x-attempt": attempt},
    )
