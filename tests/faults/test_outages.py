"""The broker or the database goes away mid-batch and comes back: the batch completes with exact counts."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
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
