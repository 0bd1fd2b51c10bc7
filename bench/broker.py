"""What the benchmark asks RabbitMQ directly: queue depths and consumers (passive declares), purges, and
removing the run's topology afterwards.

The broker may be shared (other test sessions, other deployments) and restarted under us. Rather than
lose a run, every call reconnects and retries; `reconnects` counts it, so the report can flag numbers
measured across a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError, ChannelNotFoundEntity

from localrun.supervisor import SERVICES
from shared.bus import Topology

log = structlog.get_logger()
T = TypeVar("T")

RECONNECT_FOR = 120.0  # seconds: how long a broker restart may take before the run gives up


@dataclass(frozen=True)
class QueueState:
    messages: int  # ready messages (not counting those delivered and not yet acked)
    consumers: int


class Broker:
    def __init__(self, url: str, topology: Topology) -> None:
        self._url = url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self.topology = topology
        self.reconnects = 0

    @classmethod
    async def connect(cls, url: str, topology: Topology) -> Broker:
        broker = cls(url, topology)
        await broker._connect()
        return broker

    async def _connect(self) -> None:
        # A plain connection: a robust one caches declarations, so passive declares would not refresh.
        self._connection = await aio_pika.connect(self._url)
        self._channel = await self._connection.channel()

    async def _reconnect(self) -> None:
        self.reconnects += 1
        log.warning("broker_connection_lost_reconnecting", reconnects=self.reconnects)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        deadline = time.monotonic() + RECONNECT_FOR
        while True:
            try:
                await self._connect()
                return
            except (AMQPConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    async def _live_channel(self) -> AbstractChannel:
        if self._connection is None or self._connection.is_closed:
            await self._reconnect()
        elif self._channel is None or self._channel.is_closed:  # closed by a failed passive declare
            self._channel = await self._connection.channel()
        assert self._channel is not None
        return self._channel

    async def _call(self, action: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """Run `action` on a live channel, reconnecting once if the connection died under it."""
        for attempt in range(2):
            try:
                return await action(await self._live_channel())
            except ChannelNotFoundEntity:
                raise
            except (AMQPConnectionError, ChannelInvalidStateError, ConnectionError, RuntimeError):
                # aio-pika raises RuntimeError for a channel opened on a connection that just closed.
                if attempt:
                    raise
                await self._reconnect()
        raise AssertionError("unreachable")

    @property
    def version(self) -> str | None:
        transport = self._connection.transport if self._connection else None
        if transport is None:
            return None
        version = transport.connection.server_properties.get("version")
        return version.decode() if isinstance(version, bytes) else str(version) if version else None

    async def _queue(self, service: str) -> AbstractQueue:
        name = self.topology.queue(service)
        return await self._call(lambda channel: channel.declare_queue(name, passive=True))

    async def state(self, service: str) -> QueueState:
        """Depth and consumers of `service`'s queue; zero while the queue does not exist yet."""
        try:
            queue = await self._queue(service)
        except ChannelNotFoundEntity:  # no such queue (yet); the broker closed our channel for asking
            return QueueState(0, 0)
        result = queue.declaration_result
        return QueueState(result.message_count or 0, result.consumer_count or 0)

    async def purge(self, service: str) -> None:
        await (await self._queue(service)).purge()

    async def delete_topology(self) -> None:
        """Remove every queue and the exchange of this run's prefix, so no benchmark leaves state behind."""
        for service in SERVICES:
            for name in self.topology.queues(service):
                await self._delete_queue(name)
        await self._call(lambda channel: channel.exchange_delete(self.topology.exchange))

    async def _delete_queue(self, name: str) -> None:
        await self._call(lambda channel: channel.queue_delete(name))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
