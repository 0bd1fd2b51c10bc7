"""Deliveries repeat (a flaky webhook, duplicated events): each effect still happens exactly once."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest

from shared.bus import EventBus
from shared.events import Event, ImageCompressed, ImageFailed, RequestCompleted
from shared.files import output_file_id
from shared.mongo import Mongo, connect_mongo
from tests.conftest import eventually
from tests.faults.conftest import (
    COMPRESSED,
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


async def test_a_webhook_that_fails_twice_is_delivered_once_with_its_attempts_recorded(
    stack: Stack, mongo: Mongo
) -> None:
    stack.origin.webhook_failures = 2
    batch = make_batch(stack.origin)
    request_id = await run_batch(stack, batch, webhook_url=f"{stack.origin.base_url}/hook")

    await wait_completed(stack, mongo, request_id)

    async def webhook_done() -> dict | None:
        request = await mongo.requests.find_one({"_id": request_id})
        assert request is not None
        marks = request.get("notified", {}).values()
        return request if any("webhook" in m for m in marks) else None

    request = await eventually(webhook_done, timeout=30)
    attempts = [n for n in request["notifications"] if n["channel"] == "webhook"]
    assert [(a["attempt"], a["outcome"], a["status"]) for a in attempts] == [
        (1, "retryable", 500),
        (2, "retryable", 500),
        (3, "ok", 204),
    ]
    assert len({a["notification_id"] for a in attempts}) == 1
    assert list(request["notified"].values()) == [{"email": "sent", "webhook": "sent"}]
    await asyncio.sleep(0.5)  # nothing more arrives
    assert len(stack.origin.webhooks) == 3
    assert len({hook["headers"]["webhook-id"] for hook in stack.origin.webhooks}) == 1, "one message, retried"

    # The status API shows the same history.
    status = await stack.status(request_id)
    shown = [n for n in status["notifications"] if n["channel"] == "webhook"]
    assert [(n["attempt"], n["outcome"]) for n in shown] == [(1, "retryable"), (2, "retryable"), (3, "ok")]
    await assert_drained(stack)
    await assert_exact(mongo, request_id, batch)


async def test_fifty_concurrent_duplicates_of_the_final_outcome_complete_the_request_once(
    start: StackFactory,
) -> None:
    # No compressor: the test reports the outcomes itself, so it controls which one comes last.
    stack = await start(compressors=0)
    spy = CompletionSpy(stack.settings)
    await spy.bind()
    mongo = connect_mongo(stack.settings)
    bus = EventBus(stack.settings)
    await bus.connect()
    try:
        batch = make_batch(stack.origin)
        request_id = await run_batch(stack, batch)
        outcomes: list[Event] = [
            ImageCompressed(
                request_id=request_id,
                index=i,
                url=url,
                file_id=output_file_id(request_id, i),
                content_type="image/jpeg",
                input_bytes=1000 + i,
                output_bytes=400 + i,
            )
            if status == COMPRESSED
            else ImageFailed(request_id=request_id, index=i, url=url, reason="HTTP 404 from origin")
            for i, (url, status) in enumerate(batch.expected)
        ]
        *first, final = outcomes
        await bus.publish_many(first)
        await wait_for_outcomes(mongo, request_id, at_least=len(first))

        await asyncio.gather(*(bus.publish(final) for _ in range(50)))

        await wait_completed(stack, mongo, request_id)
        await assert_notified_once(stack, spy, request_id)
        await assert_drained(stack, services=("status", "notifier"))
        request = await assert_exact(mongo, request_id, batch, outputs_stored=False)
        assert request["bytes_in"] == sum(
            1000 + i for i, (_, s) in enumerate(batch.expected) if s == COMPRESSED
        )
    finally:
        await bus.close()
        await mongo.close()
        await spy.delete()


async def queue_declared(stack: Stack, service: str) -> bool:
    try:
        await queue_depths(stack.settings, (service,))
    except aio_pika.exceptions.ChannelClosed:  # not declared (yet): a passive declare is refused
        return False
    return True


async def test_twenty_concurrent_copies_of_one_completion_send_one_email_and_one_webhook(
    start: StackFactory,
) -> None:
    stack = await start(compressors=1)
    mongo = connect_mongo(stack.settings)
    bus = EventBus(stack.settings)
    await bus.connect()
    try:
        await eventually(lambda: queue_declared(stack, "notifier"), timeout=30)
        stack.supervisor.stop("notifier", grace=10)  # its queue gathers the copies until it is back
        batch = make_batch(stack.origin, size=20)
        request_id = await run_batch(stack, batch, webhook_url=f"{stack.origin.base_url}/hook")
        await wait_completed(stack, mongo, request_id)
        request = await mongo.requests.find_one({"_id": request_id})
        assert request is not None
        completion = RequestCompleted(
            event_id=request["completion_event_id"],
            request_id=request_id,
            total_images=batch.size,
            compressed=batch.compressed,
            failed=batch.failed,
        )
        await asyncio.gather(*(bus.publish(completion) for _ in range(20)))  # 21 copies waiting

        started = time.monotonic()
        stack.start_service("notifier")  # takes 16 at once (its prefetch), then the rest

        async def both_sent() -> bool:
            found = await mongo.requests.find_one({"_id": request_id})
            return found is not None and found.get("notified", {}).get(completion.event_id) == {
                "email": "sent",
                "webhook": "sent",
            }

        await eventually(both_sent, timeout=30)
        await assert_drained(stack, services=("notifier",))
        took = time.monotonic() - started
        emails, hooks = len(stack.smtp.for_request(request_id)), len(stack.origin.webhooks)
        assert (emails, hooks) == (1, 1)
        assert len(log_lines(stack, "notifier", "unavailable_retrying_later")) >= 1, "no copy ever waited"
        print(
            f"\nMEASURED 21 concurrent copies: {emails} email, {hooks} webhook; all settled in {took:.1f} s"
        )
    finally:
        await bus.close()
        await mongo.close()


async def test_publishes_no_queue_takes_are_failed_publishes_and_nothing_is_lost(start: StackFactory) -> None:
    # Only the gateway: no subscriber has declared its queue yet, so the broker returns every publish.
    stack = await start(compressors=0, services=("upload",))
    mongo = connect_mongo(stack.settings)
    try:
        batch = make_batch(stack.origin, size=20)
        request_id = await run_batch(stack, batch, webhook_url=f"{stack.origin.base_url}/hook")
        await eventually(lambda: log_lines(stack, "upload", "outbox_publish_failed"), timeout=15)
        request = await mongo.requests.find_one({"_id": request_id})
        assert request is not None and request["outbox_pending"] and request["published_chunks"] == 0

        # The compressor takes them; its outcomes come back in turn (no status queue) and are retried.
        stack.start_service("compressor", "compressor-1")

        async def all_stored() -> bool:
            return await mongo.files.count_documents({}) == batch.compressed

        await eventually(all_stored, timeout=60)
        await eventually(lambda: log_lines(stack, "compressor-1", "unavailable_retrying_later"), timeout=15)
        assert await outcomes_recorded(mongo, request_id) == 0
        parked = stack.settings.bus_prefix + ".compressor.parked"
        assert (await queue_depths(stack.settings, ("compressor",)))[parked] == 0, "an image was given up on"

        # Status records them and completes the request; its RequestCompleted comes back (no notifier).
        stack.start_service("status")
        await wait_completed(stack, mongo, request_id)
        await eventually(lambda: log_lines(stack, "status", "completion_publish_failed"), timeout=15)
        request = await mongo.requests.find_one({"_id": request_id})
        assert request is not None and request["completion_pending"] is True
        assert stack.smtp.for_request(request_id) == []

        started = time.monotonic()
        stack.start_service("notifier")  # the sweeper's next publish is taken
        await eventually(lambda: stack.smtp.for_request(request_id), timeout=60)
        took = time.monotonic() - started
        await asyncio.sleep(1.0)
        assert (len(stack.smtp.for_request(request_id)), len(stack.origin.webhooks)) == (1, 1)
        await assert_drained(stack)
        await assert_exact(mongo, request_id, batch)
        print(f"\nMEASURED returned publishes: nothing lost; email {took:.1f} s after the notifier started")
    finally:
        await mongo.close()
