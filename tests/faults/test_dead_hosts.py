"""A host that accepts connections and never answers, with make run's defaults (2 compressors, 15 s read
timeout, 3 fetch attempts): it neither starves a healthy request uploaded after it nor holds its own
request for long, and one dead URL gets its final answer within the documented bound.

The targets (issue 9): 1,000 images on the dead host uploaded first, then 10 on a healthy host: the 10
complete within 60 s, and the 1,000 reach COMPLETED (each failed, with a reason) within 5 minutes. One
dead URL alone (its host's breaker never opens): a final answer within 2 minutes.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from localrun.samples import photo
from shared.mongo import connect_mongo
from shared.settings import Settings
from tests.faults.conftest import StackFactory
from tests.origin import SilentOrigin
from tests.stack import Stack

pytestmark = pytest.mark.faults

DEAD_IMAGES, HEALTHY_IMAGES = 1_000, 10
HEALTHY_WITHIN_S, DEAD_WITHIN_S, ONE_DEAD_URL_WITHIN_S = 60, 300, 120
# What make_settings shortens for the other tests, back to the defaults make run uses.
MAKE_RUN_DEFAULTS = {
    name: Settings.model_fields[name].get_default(call_default_factory=True)
    for name in (
        "fetch_connect_timeout",
        "fetch_read_timeout",
        "fetch_total_timeout",
        "fetch_attempts",
        "fetch_backoff",
        "retry_delays_ms",
        "max_in_flight",
        "host_concurrency",
        "host_failures_to_open",
        "host_cooldown",
        "outbox_window",
    )
}


@pytest.fixture
async def dead_hosts() -> AsyncIterator[tuple[SilentOrigin, SilentOrigin]]:
    many, lone = await SilentOrigin().start(), await SilentOrigin().start()
    yield many, lone
    await many.stop()
    await lone.stop()


def product_csv(urls: list[str], per_row: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for row, start in enumerate(range(0, len(urls), per_row)):
        writer.writerow([row + 1, f"Product {row + 1}", ", ".join(urls[start : start + per_row])])
    return out.getvalue()


async def completed_after(stack: Stack, request_id: str, started: float, limit: float) -> float:
    """Seconds from `started` until the request is COMPLETED; fails past `limit`."""
    loop = asyncio.get_running_loop()
    while loop.time() - started < limit:
        stack.supervisor.poll()
        if (await stack.status(request_id, view="summary"))["status"] == "COMPLETED":
            return loop.time() - started
        await asyncio.sleep(0.5)
    summary = await stack.status(request_id, view="summary")
    raise AssertionError(f"not COMPLETED within {limit} s: {summary}")


@pytest.mark.timeout(DEAD_WITHIN_S + 120)
async def test_a_dead_host_starves_no_one_and_fails_its_images_fast(
    start: StackFactory, dead_hosts: tuple[SilentOrigin, SilentOrigin]
) -> None:
    dead, lone = dead_hosts
    stack = await start(compressors=2, **MAKE_RUN_DEFAULTS)
    for n in range(HEALTHY_IMAGES):
        stack.origin.images[f"ok-{n}.jpg"] = photo(320, 240, seed=n)
    loop = asyncio.get_running_loop()

    t_dead = loop.time()
    dead_id = (await stack.upload(product_csv([dead.url(f"d-{n}.jpg") for n in range(DEAD_IMAGES)], 4)))[
        "request_id"
    ]
    t_healthy = loop.time()
    healthy_csv = product_csv([stack.origin.url(f"ok-{n}.jpg") for n in range(HEALTHY_IMAGES)], 2)
    healthy_id = (await stack.upload(healthy_csv))["request_id"]
    t_lone = loop.time()
    lone_id = (await stack.upload(product_csv([lone.url("alone.jpg")], 1)))["request_id"]

    healthy_s, lone_s, dead_s = await asyncio.gather(
        completed_after(stack, healthy_id, t_healthy, HEALTHY_WITHIN_S),
        completed_after(stack, lone_id, t_lone, ONE_DEAD_URL_WITHIN_S),
        completed_after(stack, dead_id, t_dead, DEAD_WITHIN_S),
    )
    print(
        f"\nMEASURED healthy 10 after the dead 1,000: {healthy_s:.1f} s; the dead 1,000: {dead_s:.1f} s; "
        f"one dead URL alone: {lone_s:.1f} s; connections the dead host saw: {dead.connections}"
    )

    healthy = await stack.status(healthy_id)
    assert (healthy["no_img_compressed"], healthy["no_img_failed"]) == (HEALTHY_IMAGES, 0)
    reasons = await failure_reasons(stack, dead_id)
    assert sum(reasons.values()) == DEAD_IMAGES, "every image of the dead host has an outcome"
    assert all(reason for reason in reasons), "each failed with a reason"
    assert any(reason.startswith("host unresponsive") for reason in reasons), reasons
    print(f"MEASURED reasons: {dict(reasons.most_common(3))}")
    (lone_failure,) = (await failure_reasons(stack, lone_id)).keys()
    assert lone_failure.startswith("timed out"), lone_failure


async def failure_reasons(stack: Stack, request_id: str) -> Counter[str]:
    mongo = connect_mongo(stack.settings)
    try:
        outcomes: list[dict[str, Any]] = [
            doc
            async for doc in mongo.images.find(
                {"request_id": request_id}, projection={"reason": 1, "status": 1}
            )
        ]
    finally:
        await mongo.close()
    assert all(doc["status"] == "FAILED" for doc in outcomes)
    # Reasons name the host and a countdown: group them by their first words.
    return Counter(" ".join(doc.get("reason", "").split()[:3]) for doc in outcomes)
