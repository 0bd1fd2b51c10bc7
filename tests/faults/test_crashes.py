"""Processes die mid-batch (kill -9, SIGTERM): nothing is lost, nothing is counted twice."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import structlog

from shared.storage import Store, connect_store, image_key
from tests.conftest import eventually
from tests.faults.conftest import (
    BATCH,
    CompletionSpy,
    StackFactory,
    assert_drained,
    assert_exact,
    assert_notified_once,
    log_lines,
    make_batch,
    outcomes_recorded,
    queue_depths,
    rabbitmqctl,
    run_batch,
    wait_for_outcomes,
)
from tests.stack import Stack

pytestmark = pytest.mark.faults


async def test_a_compressor_killed_mid_batch_loses_and_duplicates_nothing(stack: Stack, store: Store) -> None:
    batch = make_batch(stack.origin)
    request_id = await run_batch(stack, batch)

    await wait_for_outcomes(store, request_id, at_least=40)
    victim = stack.supervisor.processes["compressor-1"]
    stack.supervisor.kill("compressor-1", signal.SIGKILL)
    assert victim.proc is not None and victim.proc.returncode == -signal.SIGKILL
    assert await outcomes_recorded(store, request_id) < batch.size, "the batch finished before the kill"
    assert log_lines(stack, "compressor-1", "image_compressed"), "the victim had taken no work"

    await stack.wait_completed(request_id)  # compressor-2 carries on; the supervisor restarts compressor-1
    await assert_drained(stack)
    await assert_exact(store, request_id, batch)


async def test_status_killed_mid_batch_is_restarted_and_completes_exactly_once(
    stack: Stack, store: Store, spy: CompletionSpy
) -> None:
    batch = make_batch(stack.origin)
    request_id = await run_batch(stack, batch)

    await wait_for_outcomes(store, request_id, at_least=60)
    stack.supervisor.kill("status", signal.SIGKILL)
    assert await outcomes_recorded(store, request_id) < batch.size, "the batch finished before the kill"

    # The supervisor notices and restarts it, as `make run` does.
    with structlog.testing.capture_logs() as logs:
        await eventually(lambda: stack.supervisor.poll() or stack.supervisor.processes["status"].alive, timeout=10)
    died = [e for e in logs if e["event"] == "process_died_restarting"]
    assert [(e["process"], e["exit_code"]) for e in died] == [("status", -signal.SIGKILL)]
    assert stack.supervisor.processes["status"].restarts == 1

    await stack.wait_completed(request_id)
    await assert_notified_once(stack, spy, request_id)
    await assert_drained(stack)
    await assert_exact(store, request_id, batch)


async def test_upload_killed_before_publishing_everything_resumes_after_restart(
    start: StackFactory, broker_restarts: None
) -> None:
    # No compressor yet, and a broker policy that refuses the compressor queue more than a few messages:
    # the relay gets part of the request out, then every publish is refused, so the outbox cursor stays
    # behind. That is the moment we kill -9 the upload service.
    stack = await start(compressors=0)
    prefix = stack.settings.bus_prefix
    policy = f"{prefix}-limit"
    rabbitmqctl(
        "set_policy", "--apply-to", "queues", policy, rf"^{prefix}\.compressor$",
        '{"max-length": 10, "overflow": "reject-publish"}',
    )
    try:
        batch = make_batch(stack.origin)
        request_id = await run_batch(stack, batch)
        await eventually(lambda: log_lines(stack, "upload", "outbox_publish_failed"), timeout=20)
        stack.supervisor.kill("upload", signal.SIGKILL)
        assert stack.supervisor.processes["upload"].proc.returncode == -signal.SIGKILL  # type: ignore[union-attr]
    finally:
        rabbitmqctl("clear_policy", policy)

    store = connect_store(stack.settings)
    try:
        request = await store.requests.find_one({"_id": request_id})
        assert request is not None and request["outbox_pending"] is True
        assert request["published_chunks"] < request["row_chunks"]
        queued = (await asyncio.to_thread(queue_depths, prefix))[f"{prefix}.compressor"]
        assert 0 < queued < batch.size, f"{queued} events were out before the kill"

        for n in (1, 2):
            stack.start_service("compressor", f"compressor-{n}")
        await stack.wait_completed(request_id)  # the supervisor restarts the upload service
        assert stack.supervisor.processes["upload"].restarts == 1
        await assert_drained(stack)
        request = await assert_exact(store, request_id, batch)
        assert request["published_chunks"] == request["row_chunks"] and "outbox_pending" not in request
    finally:
        await store.close()


async def test_sigterm_stops_taking_work_and_requeues_what_outlasts_the_grace(
    start: StackFactory,
) -> None:
    grace = 1.0
    stack = await start(compressors=1, shutdown_grace=grace, fetch_read_timeout=10.0, fetch_total_timeout=20.0)
    batch = make_batch(stack.origin)
    slow = {url.rsplit("/", 1)[1] for url, _ in batch.expected[5::10]}
    for name in stack.origin.images:
        stack.origin.delay[name] = 3.0 if name in slow else 0.05
    request_id = await run_batch(stack, batch)

    store = connect_store(stack.settings)
    try:
        # Wait until compressor-1 (the only one) has just started fetching a slow image: one not yet
        # requested when we last looked, so it is well short of its delay when the grace runs out.
        seen = {name for name in slow if stack.origin.hits[name]}

        def fresh_slow_fetch() -> str | None:
            started = {name for name in slow if stack.origin.hits[name]} - seen
            seen.update(started)
            return min(started) if started else None

        in_flight = await eventually(fresh_slow_fetch, timeout=20, interval=0.02)
        hits_before = sum(stack.origin.hits.values())
        stopped_at = time.monotonic()
        victim = stack.supervisor.processes["compressor-1"]
        stack.supervisor.stop("compressor-1", grace=15)
        took = time.monotonic() - stopped_at
        assert victim.proc is not None and victim.proc.returncode == 0, victim.proc.returncode if victim.proc else None
        assert took < grace + 5, f"stopping took {took:.1f} s with a grace of {grace} s"
        assert sum(stack.origin.hits.values()) - hits_before <= stack.settings.max_in_flight, "took new work"
        assert log_lines(stack, "compressor-1", "draining"), "nothing was in flight"
        assert log_lines(stack, "compressor-1", "service_stopped")
        # The slow image outlasted the grace: abandoned, not recorded, and back in the queue.
        assert await store.images.count_documents({"request_id": request_id}) < batch.size
        index = int(in_flight.removesuffix(".jpg").split("-")[1])
        assert await store.images.count_documents({"_id": image_key(request_id, index)}) == 0

        stack.start_service("compressor", "compressor-2")
        await stack.wait_completed(request_id)
        assert stack.origin.hits[in_flight] == 2, "fetched once by each compressor"
        await assert_drained(stack)
        await assert_exact(store, request_id, batch)
    finally:
        await store.close()


assert BATCH >= 200
