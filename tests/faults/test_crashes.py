"""Processes die mid-batch (kill -9, SIGTERM): nothing is lost, nothing is counted twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import timedelta
from subprocess import PIPE
from urllib.parse import urlsplit

import pytest
import structlog

import shared.mongo
from localrun.supervisor import wait_for_port
from shared.mongo import Mongo, SessionReaper, connect_mongo
from shared.repository import image_key
from shared.settings import Settings
from tests.conftest import eventually, settings_env
from tests.faults.conftest import (
    ChokingProxy,
    CompletionSpy,
    StackFactory,
    assert_drained,
    assert_exact,
    assert_notified_once,
    log_lines,
    make_batch,
    outcomes_recorded,
    queue_depths,
    run_batch,
    wait_completed,
    wait_for_outcomes,
)
from tests.stack import Stack

pytestmark = pytest.mark.faults


def index_of(name: str) -> int:
    """The image index in one of make_batch's file names ("b-00012.jpg")."""
    return int(name.removesuffix(".jpg").split("-")[1])


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_a_compressor_killed_mid_batch_loses_and_duplicates_nothing(
    start: StackFactory, isolation: str
) -> None:
    stack = await start(codec_isolation=isolation)
    mongo = connect_mongo(stack.settings)
    try:
        await _compressor_killed_mid_batch(stack, mongo, codec_processes=isolation == "process")
    finally:
        await mongo.close()


async def _compressor_killed_mid_batch(stack: Stack, mongo: Mongo, *, codec_processes: bool) -> None:
    batch = make_batch(stack.origin, delay=0.1)
    request_id = await run_batch(stack, batch)

    await wait_for_outcomes(mongo, request_id, at_least=40)
    victim = stack.supervisor.processes["compressor-1"].proc
    assert victim is not None
    stack.supervisor.kill("compressor-1", signal.SIGKILL)
    assert victim.returncode == -signal.SIGKILL
    if codec_processes:
        assert process_group_alive(victim.pid), "its codec processes outlive it, until the supervisor notices"
    assert await outcomes_recorded(mongo, request_id) < batch.size, "the batch finished before the kill"
    assert log_lines(stack, "compressor-1", "image_compressed"), "the victim had taken no work"

    # compressor-2 carries on meanwhile, and the supervisor restarts compressor-1.
    await wait_completed(stack, mongo, request_id)
    assert stack.supervisor.processes["compressor-1"].restarts == 1
    await eventually(lambda: not process_group_alive(victim.pid), timeout=5)  # its codec processes are gone
    await assert_drained(stack)
    await assert_exact(mongo, request_id, batch)


async def test_status_killed_mid_batch_is_restarted_and_completes_exactly_once(
    stack: Stack, mongo: Mongo, spy: CompletionSpy
) -> None:
    batch = make_batch(stack.origin, delay=0.1)
    request_id = await run_batch(stack, batch)

    await wait_for_outcomes(mongo, request_id, at_least=60)
    stack.supervisor.kill("status", signal.SIGKILL)
    assert await outcomes_recorded(mongo, request_id) < batch.size, "the batch finished before the kill"

    # The supervisor notices and restarts it, as `make run` does.
    def restarted() -> bool:
        stack.supervisor.poll()
        return stack.supervisor.processes["status"].alive

    with structlog.testing.capture_logs() as logs:
        await eventually(restarted, timeout=10)
    died = [e for e in logs if e["event"] == "process_died_restarting"]
    assert [(e["process"], e["exit_code"]) for e in died] == [("status", -signal.SIGKILL)]
    assert stack.supervisor.processes["status"].restarts == 1

    await wait_completed(stack, mongo, request_id)
    await assert_notified_once(stack, spy, request_id)
    await assert_drained(stack)
    await assert_exact(mongo, request_id, batch)


# A status process that holds a transaction on a request document, for the test below to kill.
HOLD_A_TRANSACTION = """
import asyncio, sys
from shared.mongo import connect_mongo
from shared.settings import Settings

async def main() -> None:
    mongo = connect_mongo(Settings())
    async with mongo.client.start_session() as session:
        await mongo.reaper.register(session)
        await session.start_transaction()
        await mongo.requests.update_one({"_id": sys.argv[1]}, {"$inc": {"no_img_compressed": 1}}, session=session)
        print("holding", flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_the_open_transaction_of_a_killed_status_instance_is_aborted_by_a_live_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database keeps a dead client's transaction open for 60 s, and with it the request document;
    # the reaper must free it long before (PRESUMED_DEAD is shortened here to keep the test short).
    monkeypatch.setattr(shared.mongo, "PRESUMED_DEAD", timedelta(seconds=1))
    mongo = connect_mongo(settings)
    await mongo.requests.insert_one({"_id": "req-orphan", "no_img_compressed": 0})
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_A_TRANSACTION, "req-orphan", env=settings_env(settings), stdout=PIPE
    )
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"holding\n"
        child.kill()
        await child.wait()
        with pytest.raises(TimeoutError):  # the orphan holds the document
            await asyncio.wait_for(
                mongo.requests.update_one({"_id": "req-orphan"}, {"$set": {"probe": 1}}), 1.0
            )

        reaper = SessionReaper(mongo)
        await eventually(reaper.heartbeat_and_reap, timeout=10, interval=0.2)
        await asyncio.wait_for(mongo.requests.update_one({"_id": "req-orphan"}, {"$set": {"probe": 2}}), 2.0)
        request = await mongo.requests.find_one({"_id": "req-orphan"})
        assert request is not None and request["no_img_compressed"] == 0, "the orphan's write was rolled back"
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await mongo.drop()
        await mongo.close()


async def test_upload_killed_before_publishing_everything_resumes_after_restart(start: StackFactory) -> None:
    # The upload service reaches the broker through a proxy that chokes after about 30 KB: its relay gets
    # part of the request's events out (~50 of 200) and then waits for confirms, its outbox cursor still
    # at the start. That is the moment we kill -9 it. The compressors have been scaled to zero (their queue
    # exists, nobody consumes it), so the queue shows what got out.
    stack = await start(compressors=1)
    await eventually(lambda: log_lines(stack, "compressor-1", "service_started"), timeout=60)
    stack.supervisor.stop("compressor-1")
    proxy = ChokingProxy(stack.settings.amqp_url, budget=30_000)
    proxy_port = await proxy.start()
    stack.supervisor.stop("upload")
    parts = urlsplit(stack.settings.amqp_url)
    choked_url = parts._replace(netloc=f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{proxy_port}").geturl()
    stack.supervisor.start_service("upload", IMAGEPIPE_AMQP_URL=choked_url)
    wait_for_port("127.0.0.1", stack.settings.port, 30, "the API")
    mongo = connect_mongo(stack.settings)
    compressor_queue = f"{stack.settings.bus_prefix}.compressor"
    try:
        batch = make_batch(stack.origin)
        request_id = await run_batch(stack, batch)

        async def partly_published() -> int:
            return (await queue_depths(stack.settings, ["compressor"]))[compressor_queue]

        await eventually(partly_published, timeout=20)
        await asyncio.sleep(0.5)  # nothing more gets through
        stack.supervisor.kill("upload", signal.SIGKILL)
        request = await mongo.requests.find_one({"_id": request_id})
        assert request is not None and request["outbox_pending"] is True
        assert request["published_chunks"] < request["row_chunks"]
        queued = await partly_published()
        assert 0 < queued < batch.size, f"{queued} of {batch.size} events were out before the kill"

        proxy.open()
        for n in (1, 2):
            stack.start_service("compressor", f"compressor-{n}")  # scaled up again
        await wait_completed(stack, mongo, request_id)  # the supervisor restarts the upload service
        assert stack.supervisor.processes["upload"].restarts == 1
        await assert_drained(stack)
        request = await assert_exact(mongo, request_id, batch)
        assert request["published_chunks"] == request["row_chunks"] and "outbox_pending" not in request
    finally:
        await mongo.close()
        await proxy.stop()


async def test_sigterm_stops_taking_work_and_requeues_what_outlasts_the_grace(
    start: StackFactory,
) -> None:
    grace = 1.0
    stack = await start(
        compressors=1, shutdown_grace=grace, fetch_read_timeout=10.0, fetch_total_timeout=20.0
    )
    batch = make_batch(stack.origin)
    slow = {url.rsplit("/", 1)[1] for url, _ in batch.expected[5::20]}
    for name in stack.origin.images:
        stack.origin.delay[name] = 2.5 if name in slow else 0.05
    request_id = await run_batch(stack, batch)

    mongo = connect_mongo(stack.settings)
    try:
        # Mid-batch, wait until compressor-1 (the only one) has just started fetching a slow image: one not
        # yet requested when we last looked, so it is well short of its delay when the grace runs out.
        await wait_for_outcomes(mongo, request_id, at_least=20)
        seen = {name for name in slow if stack.origin.hits[name]}

        def fresh_slow_fetch() -> str | None:
            started = {name for name in slow if stack.origin.hits[name]} - seen
            seen.update(started)
            return min(started) if started else None

        in_flight = await eventually(fresh_slow_fetch, timeout=20, interval=0.02)
        hits_before = sum(stack.origin.hits.values())
        victim = stack.supervisor.processes["compressor-1"]
        stopped_at = time.monotonic()
        # In a thread: the origin in this event loop must keep serving the in-flight fetches meanwhile.
        await asyncio.to_thread(stack.supervisor.stop, "compressor-1", 15)
        took = time.monotonic() - stopped_at
        assert victim.proc is not None and victim.proc.returncode == 0, victim.proc
        assert took < grace + 5, f"stopping took {took:.1f} s with a grace of {grace} s"
        assert log_lines(stack, "compressor-1", "draining"), "nothing was in flight"
        assert log_lines(stack, "compressor-1", "service_stopped")

        # It took no new work, and finished every image it had started that could finish in the grace...
        assert sum(stack.origin.hits.values()) - hits_before <= stack.settings.max_in_flight, "took new work"
        started = {index_of(name) for name, hits in stack.origin.hits.items() if hits and name not in slow}
        finished = {
            json.loads(line)["index"]
            for event in ("image_compressed", "image_failed")
            for line in log_lines(stack, "compressor-1", event)
        }
        assert started <= finished, f"abandoned quick images {sorted(started - finished)}"
        # ...while the slow one outlasted the grace: abandoned, not recorded, and back in the queue.
        assert index_of(in_flight) not in finished
        assert await mongo.images.count_documents({"_id": image_key(request_id, index_of(in_flight))}) == 0

        stack.start_service("compressor", "compressor-2")
        await wait_completed(stack, mongo, request_id)
        assert stack.origin.hits[in_flight] == 2, "fetched once by each compressor"
        await assert_drained(stack)
        await assert_exact(mongo, request_id, batch)
    finally:
        await mongo.close()
