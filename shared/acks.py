"""Acknowledgements, coalesced: the messages whose handlers finish in one turn of the event loop are
acknowledged by one `multiple` ack where their delivery tags allow it.

The status service records a batch of outcomes in one transaction, and every handler of the batch
returns at once; one frame then settles them all instead of one frame (a socket write on each side, and
the broker's work) per message. A `multiple` ack settles every unsettled delivery of its channel up to
its tag, so it is sent only when each of those is done: the tracker knows which tags of a channel are
settled (delivery tags count up from 1 on each channel). A message that cannot join one is acknowledged
alone, in the same turn, so nothing ever waits for a slower message to be acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage


@dataclass
class _Channel:
    settled_up_to: int = 0  # every delivery tag up to this one is settled
    settled_above: set[int] = field(default_factory=set)  # settled tags above it

    def settle(self, tag: int) -> None:
        if tag > self.settled_up_to:
            self.settled_above.add(tag)

    def extend(self, done: dict[int, AbstractIncomingMessage]) -> list[int]:
        """Settle the tags in `done` that continue the settled prefix; returns them, in order."""
        joined = []
        while True:
            following = self.settled_up_to + 1
            if following in self.settled_above:
                self.settled_above.discard(following)
            elif following in done:
                joined.append(following)
            else:
                return joined
            self.settled_up_to = following


class AckCoalescer:
    def __init__(self) -> None:
        self._channels: weakref.WeakKeyDictionary[object, _Channel] = weakref.WeakKeyDictionary()
        self._due: list[tuple[AbstractIncomingMessage, asyncio.Future[None]]] = []

    def ack(self, message: AbstractIncomingMessage) -> asyncio.Future[None]:
        """Acknowledge `message` at the end of this turn of the loop; the future is done once it is sent."""
        loop = asyncio.get_running_loop()
        if not self._due:
            loop.call_soon(self._flush)
        sent = loop.create_future()
        self._due.append((message, sent))
        return sent

    def settled(self, message: AbstractIncomingMessage) -> None:
        """`message` was settled otherwise (rejected, requeued)."""
        if message.delivery_tag is not None:
            self._channel(message).settle(message.delivery_tag)

    def _channel(self, message: AbstractIncomingMessage) -> _Channel:
        # Keyed by the driver's channel: a reconnect opens a new one, whose tags start again from 1.
        return self._channels.setdefault(message.channel, _Channel())

    def _flush(self) -> None:
        due, self._due = self._due, []
        by_channel: dict[int, list[tuple[AbstractIncomingMessage, asyncio.Future[None]]]] = {}
        for message, future in due:
            by_channel.setdefault(id(message.channel), []).append((message, future))
        for batch in by_channel.values():
            sent = [future for _, future in batch]
            try:
                frames = self._frames([message for message, _ in batch])
            except Exception as exc:  # never leave a handler waiting for an ack that is not coming
                for future in sent:
                    future.set_exception(exc)
                continue
            sending = asyncio.gather(*(message.ack(multiple=multiple) for message, multiple in frames))
            sending.add_done_callback(functools.partial(_report, sent))

    def _frames(self, batch: list[AbstractIncomingMessage]) -> list[tuple[AbstractIncomingMessage, bool]]:
        """The acks that settle `batch` (messages of one channel): (message, multiple)."""
        channel = self._channel(batch[0])
        done = {m.delivery_tag: m for m in batch if m.delivery_tag is not None}
        joined = channel.extend(done)
        alone = [m for m in batch if m.delivery_tag not in joined]
        for message in alone:
            self.settled(message)
        frames = [(message, False) for message in alone]
        if joined:
            frames.append((done[joined[-1]], len(joined) > 1))
        return frames


def _report(sent: list[asyncio.Future[None]], sending: asyncio.Future[list[None]]) -> None:
    # An ack fails only with its channel, and then so does every other ack of the batch.
    error = None if sending.cancelled() else sending.exception()
    for future in sent:
        if future.done():
            continue
        if sending.cancelled():
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)
