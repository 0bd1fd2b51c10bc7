"""Coalesced acknowledgements: one `multiple` ack only where it settles nothing that is still being handled."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage

from shared.acks import AckCoalescer


@dataclass(eq=False)  # hashable by identity, like the driver's channel
class Channel:
    frames: list[tuple[int, bool]] = field(default_factory=list)


@dataclass
class Message:
    delivery_tag: int
    channel: Channel

    async def ack(self, multiple: bool = False) -> None:
        self.channel.frames.append((self.delivery_tag, multiple))


def messages(channel: Channel, *tags: int) -> list[AbstractIncomingMessage]:
    return [cast(Any, Message(tag, channel)) for tag in tags]


async def ack_together(acks: AckCoalescer, batch: list[AbstractIncomingMessage]) -> None:
    await asyncio.gather(*(acks.ack(m) for m in batch))


async def test_messages_done_together_are_settled_by_one_multiple_ack() -> None:
    channel, acks = Channel(), AckCoalescer()
    await ack_together(acks, messages(channel, 2, 1, 3))
    assert channel.frames == [(3, True)]
    await ack_together(acks, messages(channel, 4))
    assert channel.frames[1:] == [(4, False)]


async def test_a_message_still_being_handled_is_never_covered_by_a_multiple_ack() -> None:
    channel, acks = Channel(), AckCoalescer()
    one, two, three, four = messages(channel, 1, 2, 3, 4)
    await ack_together(acks, [one, three, four])  # two is still being handled
    assert sorted(channel.frames) == [(1, False), (3, False), (4, False)]

    acks.settled(two)  # requeued, say: nothing acks it; what follows joins the settled prefix
    await ack_together(acks, messages(channel, 6, 5))
    assert channel.frames[3:] == [(6, True)]


async def test_each_channel_counts_its_own_tags() -> None:
    old, new, acks = Channel(), Channel(), AckCoalescer()
    await ack_together(acks, messages(old, 1, 2) + messages(new, 1))
    assert (old.frames, new.frames) == ([(2, True)], [(1, False)])
