"""Deliveries repeat (a flaky webhook, duplicated events): each effect still happens exactly once."""

from __future__ import annotations

import asyncio

import pytest

from shared.bus import EventBus
from shared.events import Event, ImageCompressed, ImageFailed
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
    make_batch,
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
