"""What the benchmark asks RabbitMQ directly: queue depths and consumers (passive declares), purges, and
removing the run's topology afterwards."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from shared.bus import SUBSCRIPTIONS, Topology


@dataclass(frozen=True)
class QueueState:
    messages: int  # ready messages (not counting those delivered and not yet acked)
    consumers: int


class Broker:
    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel, topology: Topology):
        self._connection = connection
        self._channel = channel
        self.topology = topology

    @classmethod
    async def connect(cls, url: str, topology: Topology) -> Broker:
        connection = await aio_pika.connect_robust(url)
        return cls(connection, await connection.channel(), topology)

    @property
    def version(self) -> str | None:
        transport = self._connection.transport
        if transport is None:
            return None
        version = transport.connection.server_properties.get("version")
        return version.decode() if isinstance(version, bytes) else str(version) if version else None

    async def state(self, service: str) -> QueueState:
        """Depth and consumers of `service`'s queue; zero while the queue does not exist yet."""
        try:
            queue = await self._channel.declare_queue(self.topology.queue(service), passive=True)
        except aio_pika.exceptions.ChannelClosed:  # no such queue: the broker closed our channel
            self._channel = await self._connection.channel()
            return QueueState(0, 0)
        result = queue.declaration_result
        return QueueState(result.message_count or 0, result.consumer_count or 0)

    async def purge(self, service: str) -> None:
        queue = await self._channel.declare_queue(self.topology.queue(service), passive=True)
        await queue.purge()

    async def delete_topology(self) -> None:
        """Remove every queue and the exchange of this run's prefix, so no benchmark leaves state behind."""
        t = self.topology
        for service in SUBSCRIPTIONS:
            names = [t.queue(service), t.dead_letter_queue(service)]
            names += [t.retry_queue(service, delay) for delay in t.retry_delays_ms]
            for name in names:
                await self._channel.queue_delete(name)
        await self._channel.exchange_delete(t.exchange)

    async def close(self) -> None:
        await self._connection.close()
