"""Live progress (services/upload/progress.py) on the in-memory repository: what a snapshot holds, that
watchers share one rendering, and that a stream ends at the final state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from services.upload.errors import ApiError
from services.upload.openapi import ProgressSnapshot
from services.upload.progress import IMAGES_SHOWN, progress_events, render_progress
from services.upload.status_view import ShortLivedCache
from shared.links import Links
from shared.mongo import StorageUnavailable
from shared.repository import OutcomeDoc, OutcomeStatus, RowDoc, Upload
from tests.fakes import FakeRequestRepository

LINKS = Links("http://api")


async def stored_request(repo: FakeRequestRepository, rows: int, urls_per_row: int = 2) -> str:
    docs = [
        RowDoc(
            serial=str(n),
            name=f"SKU{n}",
            urls=[f"http://o/{n}-{i}.jpg" for i in range(urls_per_row)],
            cells=[],
        )
        for n in range(rows)
    ]
    await repo.add_rows("req-1", 0, 0, docs)
    upload = Upload(
        email="a@example.com",
        webhook_url=None,
        columns=[],
        total_products=rows,
        total_images=rows * urls_per_row,
        row_chunks=1,
    )
    await repo.create_request("req-1", upload)
    await repo.accept_request("req-1")
    return "req-1"


def outcome(index: int, url: str, *, failed: bool = False) -> OutcomeDoc:
    details: dict[str, Any] = (
        {"reason": "HTTP 404"}
        if failed
        else {
            "file_id": f"{index:032x}",
            "content_type": "image/jpeg",
            "input_bytes": 1000,
            "output_bytes": 250,
        }
    )
    status = OutcomeStatus.FAILED if failed else OutcomeStatus.COMPRESSED
    return OutcomeDoc(
        request_id="req-1", index=index, url=url, status=status, at=datetime.now(UTC), **details
    )  # type: ignore[typeddict-item]


def renderer(repo: FakeRequestRepository, request_id: str) -> Callable[[], Awaitable[bytes]]:
    async def render() -> bytes:
        request = await repo.get(request_id)
        assert request is not None
        return await render_progress(repo, request, LINKS)

    return render


async def test_a_snapshot_has_the_counts_and_before_after_of_the_first_images() -> None:
    repo = FakeRequestRepository()
    request_id = await stored_request(repo, rows=20)  # 40 images, more than a snapshot shows
    await repo.record_outcomes(
        request_id, [outcome(0, "http://o/0-0.jpg"), outcome(1, "http://o/0-1.jpg", failed=True)]
    )
    request = await repo.get(request_id)
    assert request is not None

    snapshot = ProgressSnapshot.model_validate_json(await render_progress(repo, request, LINKS))

    assert (snapshot.no_img_compressed, snapshot.no_img_failed, snapshot.total_images) == (1, 1, 40)
    assert len(snapshot.images) == IMAGES_SHOWN
    first, second, third = snapshot.images[:3]
    assert (first.product, first.input_url, first.output_url) == (
        "SKU0",
        "http://o/0-0.jpg",
        f"http://api/image/{0:032x}",
    )
    assert (first.input_bytes, first.output_bytes) == (1000, 250)
    assert (second.status, second.reason, second.output_url) == (OutcomeStatus.FAILED, "HTTP 404", None)
    assert third.status is None and third.output_url is None  # not done yet


async def collect(events: Any) -> list[dict[str, Any]]:
    return [event async for event in events]


async def test_watchers_of_one_request_share_one_rendering_per_interval() -> None:
    repo = FakeRequestRepository()
    request_id = await stored_request(repo, rows=2)
    renders = 0
    render_once = renderer(repo, request_id)

    async def render() -> bytes:
        nonlocal renders
        renders += 1
        return await render_once()

    interval = 0.2
    cache = ShortLivedCache(interval)

    async def shared() -> bytes:
        return await cache.get(request_id, render)

    started = time.monotonic()
    watchers = [asyncio.create_task(collect(progress_events(shared, interval))) for _ in range(25)]
    await asyncio.sleep(1.5)
    await repo.record_outcomes(request_id, [outcome(i, f"http://o/{i // 2}-{i % 2}.jpg") for i in range(4)])
    results = await asyncio.wait_for(asyncio.gather(*watchers), 10)
    elapsed = time.monotonic() - started

    # One rendering per interval for all 25 (plus the one in flight when it expires), not 25 per interval.
    assert renders <= elapsed / interval + 2, (renders, elapsed)
    for events in results:
        statuses = [orjson.loads(e["data"])["status"] for e in events]
        assert statuses[0] == "PENDING" and statuses[-1] == "COMPLETED"
        assert len(statuses) == len(set(e["data"] for e in events))  # only changes are sent


async def test_a_final_request_sends_one_event_and_ends() -> None:
    repo = FakeRequestRepository()
    request_id = await stored_request(repo, rows=1, urls_per_row=1)
    await repo.record_outcomes(request_id, [outcome(0, "http://o/0-0.jpg")])

    events = await asyncio.wait_for(collect(progress_events(renderer(repo, request_id), 0.05)), 5)
    assert [e["event"] for e in events] == ["progress"]
    assert orjson.loads(events[0]["data"])["status"] == "COMPLETED"


async def test_an_outage_pauses_the_stream_and_a_vanished_request_ends_it() -> None:
    answers: list[Exception] = [
        StorageUnavailable("down"),
        StorageUnavailable("down"),
        ApiError(404, "unknown"),
    ]

    async def render() -> bytes:
        raise answers.pop(0)

    events = await asyncio.wait_for(collect(progress_events(render, 0.01)), 5)
    assert [e["event"] for e in events] == ["gone"]
    assert orjson.loads(events[0]["data"]) == {"error": "unknown"}
