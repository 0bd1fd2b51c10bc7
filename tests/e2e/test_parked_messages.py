"""Parked messages in the running system: a message no compressor can read is parked by the real bus,
counted by its metric, listed by `imagepipe parked` with why, and purged."""

from __future__ import annotations

import contextlib
import json

import aio_pika

from cli.exit_codes import Exit
from tests.conftest import eventually
from tests.e2e.test_metrics import _scrape, _value
from tests.integration.test_parked import imagepipe
from tests.stack import Stack


async def test_a_malformed_message_is_parked_listed_with_why_counted_and_purged(stack: Stack) -> None:
    settings = stack.settings
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()

        async def compressors_consuming() -> bool:  # the session's system may still be starting
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                probe = await connection.channel()
                queue = await probe.declare_queue(f"{settings.bus_prefix}.compressor", passive=True)
                return bool(queue.declaration_result.consumer_count)
            return False

        await eventually(compressors_consuming, timeout=60, interval=0.5)
        exchange = await channel.get_exchange(f"{settings.bus_prefix}.events")
        await exchange.publish(aio_pika.Message(b"{not json", message_id="garbled-1"), "image.requested")

    async def listed() -> list[dict[str, object]]:
        code, out, err = await imagepipe(settings, "list", "--service", "compressor", "--json")
        assert code == Exit.OK, err
        return [m for m in json.loads(out) if m["message_id"] == "garbled-1"]

    (parked,) = await eventually(listed, timeout=30, interval=0.5)
    assert parked["kind"] == "malformed" and parked["routing_key"] == "image.requested"
    assert str(parked["reason"]).startswith("unparseable event")
    parked_total = 0.0
    for n in (1, 2):  # whichever compressor took it counted it
        _, samples = await _scrape(stack, f"compressor-{n}")
        parked_total += _value(samples, "imagepipe_bus_messages_parked_total", reason="malformed")
    assert parked_total >= 1

    code, _, err = await imagepipe(settings, "purge", "garbled-1", "--yes")
    assert code == Exit.OK and "1 dropped" in err
    assert await listed() == []
