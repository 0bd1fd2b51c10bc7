"""`imagepipe parked` against the real RabbitMQ, run as a user runs it: a handler that fails until told
otherwise parks a message; `list` and `show` say why; `replay` sends it back and it is handled; `purge`
asks first."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import sys

import services
from cli.exit_codes import Exit
from shared.bus import EventBus
from shared.events import Event, ImageFailed
from shared.parking import CONSUMERS, ParkingLots
from shared.settings import Settings
from tests.conftest import eventually, settings_env

SERVICE = "status"


async def imagepipe(settings: Settings, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "parked",
        *args,
        env=settings_env(settings),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def parked_count(settings: Settings) -> int:
    async with ParkingLots(settings) as lots:
        return await lots.count(SERVICE)


def failed(index: int) -> ImageFailed:
    return ImageFailed(
        request_id="req-parked", index=index, url=f"http://x.example/{index}.jpg", reason="404"
    )


class Flaky:
    """Fails every event until `fixed`."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[Event] = []

    async def __call__(self, event: Event) -> None:
        if not self.fixed:
            raise RuntimeError("the database schema is wrong")
        self.handled.append(event)


async def test_a_parked_message_is_listed_with_its_reason_replayed_and_handled(
    bus: EventBus, settings: Settings
) -> None:
    handler = Flaky()
    await bus.subscribe(SERVICE, {ImageFailed: handler}, prefetch=4)
    event = failed(3)
    await bus.publish(event)
    await eventually(lambda: parked_count(settings), timeout=20)

    code, out, err = await imagepipe(settings, "list", "--json")
    assert code == Exit.OK, err
    (listed,) = json.loads(out)
    assert listed["service"] == SERVICE and listed["message_id"] == event.event_id
    assert (listed["event_type"], listed["routing_key"], listed["request_id"]) == (
        "ImageFailed",
        "image.failed",
        "req-parked",
    )
    assert listed["kind"] == "handler_failed" and listed["attempts"] == 3  # retry_delays_ms has two delays
    assert (
        "gave up after 3 attempts" in listed["reason"] and "the database schema is wrong" in listed["reason"]
    )
    code, out, _ = await imagepipe(settings, "list")  # the table, for people
    assert code == Exit.OK and event.event_id[:12] in out and "handler_failed" in out

    code, out, _ = await imagepipe(settings, "show", event.event_id[:10])
    shown = json.loads(out)
    assert code == Exit.OK and shown["event"]["index"] == 3 and shown["headers"]["x-attempt"] == 2
    assert await parked_count(settings) == 1, "looking moves nothing"

    handler.fixed = True
    code, _, err = await imagepipe(settings, "replay", "1", "--service", SERVICE)
    assert code == Exit.OK and "1 replayed" in err, err
    await eventually(lambda: handler.handled, timeout=10)
    assert [e.event_id for e in handler.handled] == [event.event_id]
    assert await parked_count(settings) == 0
    code, out, _ = await imagepipe(settings, "list", "--json")
    assert json.loads(out) == []


async def test_a_replay_resets_the_attempts_and_purge_asks_first(bus: EventBus, settings: Settings) -> None:
    handler = Flaky()
    await bus.subscribe(SERVICE, {ImageFailed: handler}, prefetch=4)
    await bus.publish_many([failed(1), failed(2)])
    await eventually(lambda: _at_least(settings, 2), timeout=20)

    code, _, err = await imagepipe(settings, "replay", "--all", "--service", SERVICE)
    assert code == Exit.OK and "2 replayed" in err
    # Still failing: each goes through every attempt again (not parked at once), then is parked again.
    await eventually(lambda: _at_least(settings, 2), timeout=20)
    code, out, _ = await imagepipe(settings, "list", "--json")
    assert [m["attempts"] for m in json.loads(out)] == [3, 3]
    assert all(m["replays"] == 1 for m in json.loads(out))

    code, _, err = await imagepipe(settings, "purge", "--all", stdin=b"n\n")
    assert code == Exit.DECLINED and "nothing dropped" in err
    assert await parked_count(settings) == 2
    code, _, err = await imagepipe(settings, "purge", "--all", "--yes")
    assert code == Exit.OK and "2 dropped" in err
    assert await parked_count(settings) == 0


async def test_unknown_names_and_an_unreachable_broker_are_told(settings: Settings) -> None:
    code, _, err = await imagepipe(settings, "replay", "deadbeef0000")
    assert code == Exit.REFUSED and "no parked message deadbeef0000" in err
    code, _, err = await imagepipe(settings, "replay", "2")
    assert code == Exit.USAGE and "--service" in err
    unreachable = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:9/"})
    code, _, err = await imagepipe(unreachable, "list")
    assert code == Exit.UNAVAILABLE and "127.0.0.1:9" in err


async def _at_least(settings: Settings, n: int) -> bool:
    return await parked_count(settings) >= n


def test_the_services_with_a_parking_lot_are_those_with_a_routing_table() -> None:
    consumers = {
        module.name.split(".")[1]
        for module in pkgutil.walk_packages(services.__path__, "services.")
        if hasattr(importlib.import_module(module.name), "ROUTES")
    }
    assert consumers == set(CONSUMERS)
