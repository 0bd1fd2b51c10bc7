"""The one event-bus building block: topology, confirmed publishing, and consuming with retry and parking.

Topology (all names start with `settings.bus_prefix`, so deployments sharing a broker stay apart):

    <prefix>.events                  topic exchange every event is published to
    <prefix>.<service>               one durable quorum queue per subscribing service
    <prefix>.<service>.retry.<N>ms   delay queues: a failed message waits N ms, then returns to its queue
    <prefix>.<service>.dead          dead letters: messages given up on (by the bus, or by the broker's
                                     delivery limit), each waiting for its outcome to be recorded
    <prefix>.<service>.parked        the parking lot: dead letters whose outcome is recorded, kept for people

A subscribing service declares its own queues and binds them to the events of its routing table (its
`ROUTES`: event type -> handler), so each subscription is written down once, beside its handlers.
Publishes are mandatory and confirmed: a message that no queue takes (its subscriber has never started)
comes back as a failed publish (`BrokerUnavailable`), to be tried again, rather than vanishing.

Which failures are retried without limit and which count towards giving up is decided in one place,
shared/errors.py (`Unavailable`), and acted on in `EventBus._after_failure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
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
from prometheus_client import Counter, Histogram

from shared.acks import AckCoalescer
from shared.errors import Unavailable
from shared.events import Event, MalformedEvent, parse_event
from shared.settings import Settings

log = structlog.get_logger()

# A message redelivered this often has killed (or been abandoned by) its consumer every time: we give up on
# it instead of handing it to a handler again, so it cannot crash-loop the fleet. Handler errors do not
# count here: they go through the retry queues. The broker's own limit is a backstop above it, and what it
# dead-letters is settled like everything else given up on.
CRASH_LIMIT = 5
DELIVERY_LIMIT = 20
GIVEN_UP = "x-given-up"  # header: why the bus gave up on the message; it is only settled from then on
# Headers a parked message carries for the people who look at it (`imagepipe parked`), besides GIVEN_UP,
# `x-attempt` (failed handler attempts) and `x-last-error`: which kind of giving up (PARK_REASONS), the
# routing key it was first published with, and when it was parked.
PARK_REASON = "x-park-reason"
ROUTING_KEY = "x-routing-key"
PARKED_AT = "x-parked-at"
# handler_failed: every retry failed; malformed: unreadable or unhandled; crash_loop: CRASH_LIMIT;
# delivery_limit: dead-lettered by the broker (DELIVERY_LIMIT).
PARK_REASONS = ("handler_failed", "malformed", "crash_loop", "delivery_limit")
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
Headers = dict[str, Any]
# Whether the message being handled may have been handled before, in part or whole (see `repeat_delivery`).
_REPEAT: ContextVar[bool] = ContextVar("repeat_delivery", default=True)


def repeat_delivery() -> bool:
    """True while handling a message that may have been handled before: redelivered by the broker, or back
    from a retry queue. A handler can look for the effects of an earlier attempt only then (a first delivery
    has none to find, unless someone republished it: its effects must be idempotent anyway). Outside a bus
    handler, True: the cautious answer."""
    return _REPEAT.get()


# deploy/prometheus/metrics.yml. Every consuming service exports these, labelled with its own name.
_HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HANDLED = Counter(
    "imagepipe_bus_messages_handled_total", "Messages whose handler succeeded", ["service", "event_type"]
)
RETRIED = Counter(
    "imagepipe_bus_messages_retried_total", "Messages sent to a retry queue", ["service", "event_type"]
)
PARKED = Counter("imagepipe_bus_messages_parked_total", "Messages parked", ["service", "reason"])
HANDLER_SECONDS = Histogram(
    "imagepipe_bus_handler_duration_seconds",
    "Time a handler took, successful or not",
    ["service", "event_type"],
    buckets=_HANDLER_BUCKETS,
)


class BrokerUnavailable(Unavailable):
    """A publish was not confirmed: the broker is unreachable, refused it, or returned it (no queue took it)."""


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

    def parking_lot(self, service: str) -> str:
        return f"{self.queue(service)}.parked"

    def retry_queue(self, service: str, delay_ms: int) -> str:
        return f"{self.queue(service)}.retry.{delay_ms}ms"

    def queues(self, service: str) -> list[str]:
        """Every queue a subscribing service declares: its own, its dead letters, its parking lot and its
        delay queues."""
        retries = [self.retry_queue(service, delay) for delay in self.retry_delays_ms]
        return [self.queue(service), self.dead_letter_queue(service), self.parking_lot(service), *retries]


class EventBus:
    def __init__(self, settings: Settings) -> None:
        self.topology = Topology(settings.bus_prefix, tuple(settings.retry_delays_ms))
        self._url = settings.amqp_url
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._acks = AckCoalescer()

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
        """Returns once the broker has confirmed the message (persisted to its queues); raises
        BrokerUnavailable if it could not, including when no queue took it (it was returned)."""
        assert self._exchange is not None, "connect() first"
        try:
            await self._channel_ready()
            await self._exchange.publish(
                _message(event.model_dump_json().encode(), event, attempt=0),
                routing_key=event.routing_key,
                mandatory=True,
            )
        except Exception as exc:
            raise BrokerUnavailable(
                f"{type(event).__name__} not published: {type(exc).__name__}: {exc}"[:500]
            ) from exc

    async def publish_many(self, events: Iterable[Event]) -> None:
        # Confirms are pipelined: many publishes in flight on one channel, each awaited for its confirm.
        try:
            await asyncio.gather(*(self.publish(e) for e in events))
        except BrokerUnavailable:
            # Cancelled while one publish had already failed (returned, say), gather reports the failure
            # and drops the cancellation: give the cancellation back, or a stopping relay would go on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            raise

    # --- consuming ------------------------------------------------------------------------------------
    async def subscribe(
        self, service: str, routes: Routes, *, prefetch: int, on_parked: ParkedHook | None = None
    ) -> None:
        """Declare `service`'s queues, bind them to the events in `routes`, and hand each event to its
        handler; a message is acknowledged only after its handler returns.

        A handler raising `Unavailable` (an outage) is retried with backoff for as long as it takes. Any
        other exception is retried through the delay queues, then given up on: so is a malformed message
        at once, and one that keeps killing its consumer. What is given up on is settled: `on_parked` gives
        it its outcome (an image its failure, a notification its failed mark), then it is parked.
        """
        assert self._connection is not None, "connect() first"
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue, dead = await self._declare_queues(channel, service, routes)

        def consumer(
            handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
        ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
            async def on_message(message: AbstractIncomingMessage) -> None:
                task = asyncio.current_task()
                assert task is not None
                self._in_flight.add(task)
                try:
                    await handle(message)
                    await self._acks.ack(message)
                except Exception:
                    # Forwarding it (to a retry queue, the dead letters or the parking lot) failed: the
                    # broker is going away, or is half back. Give it back: left unacknowledged on a
                    # channel that stays open, it would never be delivered again.
                    log.exception("message_requeued", service=service)
                    self._acks.settled(message)
                    with contextlib.suppress(Exception):
                        await message.nack(requeue=True)
                finally:
                    self._in_flight.discard(task)

            return on_message

        async def handle(message: AbstractIncomingMessage) -> None:
            await self._handle(service, message, routes)

        async def settle(message: AbstractIncomingMessage) -> None:
            await self._settle(service, message, on_parked)

        for source, handler in ((queue, handle), (dead, settle)):
            tag = await source.consume(consumer(handler))
            self._consumers.append((source, tag))

    async def _handle(self, service: str, message: AbstractIncomingMessage, routes: Routes) -> None:
        try:
            event = parse_event(message.body)
            handler = routes.get(type(event))
            if handler is None:  # bound once, since unbound: nothing here can handle it
                raise MalformedEvent(f"{type(event).__name__} is not handled by {service}")
        except MalformedEvent as exc:
            await self._give_up(service, message, str(exc), "malformed")
            return
        with _event_context(event):
            if given_up := _header_str(message, GIVEN_UP):  # a settlement to try again: never handled again
                await self._give_up(service, message, given_up, _park_reason(message))
                return
            if crashes := _crash_reason(message):
                await self._give_up(service, message, crashes, "crash_loop")
                return
            event_type = type(event).__name__
            repeat = _REPEAT.set(
                message.redelivered is True
                or any(_header_int(message, h) for h in ("x-attempt", "x-outages", "x-delivery-count"))
            )
            try:
                with HANDLER_SECONDS.labels(service, event_type).time():
                    await handler(event)
            except asyncio.CancelledError:
                raise  # shutdown: not acked, so the broker redelivers it
            except Exception as exc:
                await self._after_failure(service, message, exc)
            else:
                HANDLED.labels(service, event_type).inc()
            finally:
                _REPEAT.reset(repeat)

    async def _after_failure(self, service: str, message: AbstractIncomingMessage, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        retried = RETRIED.labels(service, message.type or "unknown")
        if isinstance(exc, Unavailable):  # shared/errors.py: an outage says nothing about the message
            await self._retry_later(service, message, reason)
            retried.inc()
            return
        delays = self.topology.retry_delays_ms
        attempt = _header_int(message, "x-attempt")
        if attempt < len(delays):
            retried.inc()
            log.warning(
                "handler_failed_retrying", attempt=attempt + 1, delay_ms=delays[attempt], reason=reason
            )
            queue = self.topology.retry_queue(service, delays[attempt])
            await self._forward(message, queue, {"x-attempt": attempt + 1, "x-last-error": reason})
        else:
            reason = f"gave up after {attempt + 1} attempts: {reason}"
            await self._give_up(service, message, reason, "handler_failed")

    async def _retry_later(
        self, service: str, message: AbstractIncomingMessage, reason: str, headers: Headers | None = None
    ) -> None:
        """Back off (each retry waits longer, up to the longest delay) and try again, with no limit."""
        outages = _header_int(message, "x-outages")
        delays = self.topology.retry_delays_ms
        delay = delays[min(outages, len(delays) - 1)]
        log.warning("unavailable_retrying_later", outages=outages + 1, delay_ms=delay, reason=reason)
        queue = self.topology.retry_queue(service, delay)
        await self._forward(
            message, queue, {**(headers or {}), "x-outages": outages + 1, "x-last-error": reason}
        )

    async def _give_up(self, service: str, message: AbstractIncomingMessage, reason: str, kind: str) -> None:
        """Stop handling it: it goes to the dead letters, to be settled (see `_settle`). `kind` is one of
        PARK_REASONS."""
        log.error("message_given_up", service=service, reason=reason)
        headers = {GIVEN_UP: reason, PARK_REASON: kind}
        await self._forward(message, self.topology.dead_letter_queue(service), headers)

    async def _settle(
        self, service: str, message: AbstractIncomingMessage, on_parked: ParkedHook | None
    ) -> None:
        """A dead letter, from `_give_up` or from the broker's delivery limit: give it its outcome, then
        park it. Until the outcome is recorded, it is retried (as given up: its handler never runs again)."""
        reason = _header_str(message, GIVEN_UP) or _broker_dead_letter_reason(message)
        kind = _park_reason(message)
        try:
            event = parse_event(message.body)
        except MalformedEvent:
            await self._park(service, message, reason, kind)
            return
        with _event_context(event):
            if on_parked is not None and _crash_reason(message):
                log.error("parked_without_outcome", reason="recording its outcome kills the consumer")
            elif on_parked is not None:
                try:
                    await on_parked(event, reason)
                except Exception as exc:
                    why = f"its outcome could not be recorded: {type(exc).__name__}: {exc}"[:500]
                    await self._retry_later(service, message, why, {GIVEN_UP: reason, PARK_REASON: kind})
                    return
            await self._park(service, message, reason, kind)

    async def _park(self, service: str, message: AbstractIncomingMessage, reason: str, kind: str) -> None:
        parked = self.topology.parking_lot(service)
        log.error("message_parked", service=service, reason=reason, queue=parked)
        headers = {GIVEN_UP: reason, PARK_REASON: kind, PARKED_AT: datetime.now(UTC).isoformat()}
        await self._forward(message, parked, headers)
        PARKED.labels(service, kind).inc()

    async def _forward(self, message: AbstractIncomingMessage, queue: str, headers: Headers) -> None:
        """Send a copy of `message` to `queue` (through the default exchange), with `headers` added."""
        assert self._channel is not None
        await self._channel_ready()
        kept = {k: v for k, v in (message.headers or {}).items() if k != "x-delivery-count"}
        kept.setdefault(ROUTING_KEY, _first_routing_key(message))
        copy = aio_pika.Message(
            body=message.body,
            headers={**kept, **headers},
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
    ) -> tuple[AbstractQueue, AbstractQueue]:
        """The service's queue and its dead letters, both to be consumed; and the rest of its topology."""
        t = self.topology
        exchange = await channel.declare_exchange(t.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        quorum: dict[str, Any] = {"x-queue-type": "quorum"}
        await channel.declare_queue(t.parking_lot(service), durable=True, arguments=quorum)
        dead = t.dead_letter_queue(service)
        dead_letters = await channel.declare_queue(dead, durable=True, arguments=quorum)
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
        return queue, dead_letters


def _header_int(message: AbstractIncomingMessage, name: str) -> int:
    value = (message.headers or {}).get(name)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def _header_str(message: AbstractIncomingMessage, name: str) -> str:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _crash_reason(message: AbstractIncomingMessage) -> str:
    deliveries = _header_int(message, "x-delivery-count")
    if deliveries < CRASH_LIMIT:
        return ""
    return f"delivered {deliveries} times without being acknowledged (consumer crashes)"


def _park_reason(message: AbstractIncomingMessage) -> str:
    """Which of PARK_REASONS: given up on by the bus (saying which, unless it predates saying), or else
    dead-lettered by the broker."""
    if not _header_str(message, GIVEN_UP):
        return "delivery_limit"
    return _header_str(message, PARK_REASON) or "handler_failed"


def _first_routing_key(message: AbstractIncomingMessage) -> str:
    """The key it was published with: this delivery's, unless the broker dead-lettered it here."""
    deaths = (message.headers or {}).get("x-death")
    oldest = deaths[-1] if isinstance(deaths, list) and deaths and isinstance(deaths[-1], dict) else {}
    keys = oldest.get("routing-keys")
    key = keys[0] if isinstance(keys, list) and keys else message.routing_key
    return key.decode() if isinstance(key, bytes) else str(key or "")


def _broker_dead_letter_reason(message: AbstractIncomingMessage) -> str:
    deaths = (message.headers or {}).get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    why = first.get("reason", "unknown")
    why = why.decode() if isinstance(why, bytes) else str(why)
    return f"dead-lettered by the broker ({why}): delivered too often without being acknowledged"


def _event_context(event: Event) -> contextlib.AbstractContextManager[None]:
    return structlog.contextvars.bound_contextvars(
        request_id=event.request_id, event_id=event.event_id, event_type=type(event).__name__
    )


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
