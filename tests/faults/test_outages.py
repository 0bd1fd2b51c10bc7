"""The broker or the database goes away mid-batch and comes back: the batch completes with exact counts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localrun.supervisor import Supervisor, free_port, secantus_argv, secantus_url, wait_for_port
from shared.mongo import connect_mongo
from tests.faults.conftest import (
    CompletionSpy,
    StackFactory,
    assert_drained,
    assert_exact,
    assert_notified_once,
    make_batch,
    outcomes_recorded,
    run_batch,
    wait_completed,
    wait_for_outcomes,
)
from tests.private_broker import PrivateBroker
from tests.stack import Stack

pytestmark = pytest.mark.faults


async def test_services_reconnect_after_a_broker_restart_mid_batch(
    start: StackFactory, private_broker: PrivateBroker
) -> None:
    stack = await start(amqp_url=private_broker.url)
    mongo = connect_mongo(stack.settings)
    spy = CompletionSpy(stack.settings)
    await spy.bind()
    try:
        batch = make_batch(
            stack.origin, delay=0.4
        )  # stop_app takes a second or two: the batch must outlast it
        request_id = await run_batch(stack, batch)

        await wait_for_outcomes(mongo, request_id, at_least=20)
        try:
            await asyncio.to_thread(private_broker.stop_app)
            assert await outcomes_recorded(mongo, request_id) < batch.size, (
                "the batch finished before the outage"
            )
            await asyncio.sleep(1.0)  # long enough for every service to notice and start reconnecting
        finally:
            await asyncio.to_thread(private_broker.start_app)  # up again whatever happened

        await wait_completed(stack, mongo, request_id)
        await assert_notified_once(stack, spy, request_id)
        await assert_drained(stack)
        await assert_exact(mongo, request_id, batch)
    finally:
        await spy.delete()
        await mongo.close()


@dataclass
class Database:
    """A SecantusDB of the test's own, so it can be killed without disturbing the session's."""

    supervisor: Supervisor
    argv: list[str]
    port: int

    @property
    def url(self) -> str:
        return secantus_url(self.port)

    def start(self) -> None:
        self.supervisor.start("secantusdb", self.argv)
        wait_for_port("127.0.0.1", self.port, 60, "SecantusDB")

    def kill(self) -> None:
        self.supervisor.kill("secantusdb", signal.SIGKILL)

    def spawn(self) -> None:
        """Start it, without waiting for it to answer."""
        self.supervisor.start("secantusdb", self.argv)

    def signal_all(self, sig: int) -> None:
        """`sig` to the server and whatever it started (it runs in a process group of its own)."""
        proc = self.supervisor.processes["secantusdb"].proc
        assert proc is not None
        os.killpg(proc.pid, sig)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    # Requested before the stack, so it is torn down after it (the stack's teardown drops its database).
    port = free_port()
    db = Database(
        Supervisor(dict(os.environ), log_dir=tmp_path, restart=False),
        secantus_argv(tmp_path / "db", port),
        port,
    )
    db.start()
    yield db
    db.supervisor.stop_all(grace=10)


async def test_a_database_restart_mid_batch_loses_and_duplicates_nothing(
    database: Database, start: StackFactory
) -> None:
    stack = await start(mongo_url=database.url)
    mongo = connect_mongo(stack.settings)
    try:
        batch = make_batch(stack.origin, delay=0.1)
        request_id = await run_batch(stack, batch)

        await wait_for_outcomes(mongo, request_id, at_least=40)
        database.kill()  # kill -9: same port and storage when it comes back
        await asyncio.sleep(1.0)
        database.start()
        assert await outcomes_recorded(mongo, request_id) < batch.size, "the batch finished before the outage"

        await wait_completed(stack, mongo, request_id)
        await assert_drained(stack)
        await assert_exact(mongo, request_id, batch)
    finally:
        await mongo.close()


# --- outages of two minutes (issue 9): they delay completion, and change nothing else -----------------------
OUTAGE_S = 120.0
# Brings an outage about and ends it; says what it did, and when the fault was lifted (time.monotonic()):
# what follows (the part starting up again, the services noticing) is the recovery measured.
Outage = Callable[[], Awaitable[tuple[str, float]]]


def for_two_minutes(stop: Callable[[], None], resume: Callable[[], None], did: str) -> Outage:
    async def outage() -> tuple[str, float]:
        await asyncio.to_thread(stop)
        try:
            await asyncio.sleep(OUTAGE_S)
        finally:
            lifted = time.monotonic()
            await asyncio.to_thread(resume)  # whatever happened
        return did, lifted

    return outage


async def batch_through_an_outage(stack: Stack, outage: Outage, name: str) -> None:
    """A batch, checked image by image, with `outage` striking once a fifth of it has its outcome; prints
    what was measured (the README and the closing note quote these lines)."""
    mongo = connect_mongo(stack.settings)
    spy = CompletionSpy(stack.settings)
    await spy.bind()
    try:
        batch = make_batch(stack.origin, delay=0.1)
        request_id = await run_batch(stack, batch, webhook_url=f"{stack.origin.base_url}/hook")
        await wait_for_outcomes(mongo, request_id, at_least=batch.size // 5)
        before = await outcomes_recorded(mongo, request_id)
        assert before < batch.size, "the batch finished before the outage"
        started = time.monotonic()
        did, lifted = await outage()
        await wait_completed(stack, mongo, request_id, timeout=180)
        recovered = time.monotonic() - lifted
        await assert_notified_once(stack, spy, request_id)
        assert len(stack.origin.webhooks) == 1, f"{len(stack.origin.webhooks)} webhooks"
        await assert_drained(stack)
        request = await assert_exact(mongo, request_id, batch)
        print(
            f"\nMEASURED {name}: {did}; outage {lifted - started:.0f} s, striking at {before}/{batch.size} "
            f"outcomes; completed {recovered:.1f} s after it was lifted; {request['no_img_failed']} images "
            f"failed ({batch.failed} expected: the origin's 404s), 0 good images failed; 1 email, 1 webhook"
        )
    finally:
        await spy.delete()
        await mongo.close()


def hang(database: Database) -> Outage:
    """The process is there, its port open, and it says nothing."""
    return for_two_minutes(
        lambda: database.signal_all(signal.SIGSTOP),
        lambda: database.signal_all(signal.SIGCONT),
        "SecantusDB stopped (SIGSTOP), then resumed",
    )


def crash_loop(database: Database) -> Outage:
    """Killed, and killed again as soon as it listens, until the two minutes are up."""

    async def outage() -> tuple[str, float]:
        deadline = time.monotonic() + OUTAGE_S
        kills = 0
        while True:
            database.kill()
            kills += 1
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
            database.spawn()
            await asyncio.to_thread(wait_for_port, "127.0.0.1", database.port, 60, "SecantusDB")
        lifted = time.monotonic()
        await asyncio.to_thread(database.start)
        return f"SecantusDB killed {kills} times, each time as soon as it listened again", lifted

    return outage


@pytest.mark.timeout(480)
@pytest.mark.parametrize("outage", [hang, crash_loop], ids=["hung", "down"])
async def test_a_database_hung_or_down_for_two_minutes_mid_batch_only_delays_completion(
    database: Database, start: StackFactory, outage: Callable[[Database], Outage]
) -> None:
    stack = await start(mongo_url=database.url)
    await batch_through_an_outage(stack, outage(database), f"database {outage.__name__}")


@pytest.mark.timeout(480)
async def test_a_broker_down_for_two_minutes_mid_batch_only_delays_completion(
    start: StackFactory, private_broker: PrivateBroker
) -> None:
    stack = await start(amqp_url=private_broker.url)
    down = for_two_minutes(
        private_broker.stop_app, private_broker.start_app, "RabbitMQ stopped (stop_app), then started"
    )
    await batch_through_an_outage(stack, down, "broker down")
