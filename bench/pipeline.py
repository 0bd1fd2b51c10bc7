"""The benchmark's phases against a running BenchStack: timed batches, the scaling series, status reads
under load, the size of a status page, and a large upload's acceptance and queueing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from bench.procstat import cpu_seconds, find_pids
from bench.stack import BenchStack, ProcessMemory
from bench.stats import percentile
from bench.statusload import LoadResult, fixed_rate
from bench.workload import outcome_times, outcomes_recorded, product_csv, request_doc, upload

log = structlog.get_logger()

RABBITMQ_PROCESS = "beam.smp"


@dataclass
class BatchResult:
    request_id: str
    compressors: int
    images: int
    compressed: int
    failed: int
    seconds: float  # from the request's created_at to its last image outcome
    upload_seconds: float
    latency_p50: float  # created_at -> an image's outcome
    latency_p99: float
    bytes_in: int
    bytes_out: int
    memory: dict[str, ProcessMemory]  # at the end of the batch
    cpu: dict[str, float]  # CPU seconds each process used during the batch
    compressor_rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # max RSS, 1st and 2nd half

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _cpu_snapshot(stack: BenchStack) -> dict[str, float]:
    snapshot = stack.cpu()
    snapshot["rabbitmq"] = sum(cpu_seconds(pid) for pid in find_pids(RABBITMQ_PROCESS))
    return snapshot


def _compressor_rss(stack: BenchStack) -> dict[str, int]:
    """Each compressor's resident memory now: its own process plus its codec workers."""
    found = stack.memory()
    return {
        name: m.main.rss + sum(w.rss for w in m.workers)
        for name, m in found.items()
        if name in stack.compressors
    }


async def run_batch(
    stack: BenchStack,
    http: aiohttp.ClientSession,
    images: int,
    tag: str,
    *,
    alongside: Callable[[str], Coroutine[Any, Any, None]] | None = None,
) -> BatchResult:
    """Upload one request of `images` images and wait for all of them; `alongside(request_id)` runs
    concurrently once the request is accepted (the status load)."""
    cpu_before = _cpu_snapshot(stack)
    accepted = await upload(http, stack.api, product_csv(stack.origin_url, tag, images))
    side = asyncio.create_task(alongside(accepted.request_id)) if alongside else None
    started = time.monotonic()
    samples: list[tuple[float, dict[str, int]]] = []

    async def completed() -> bool:
        if not samples or time.monotonic() - samples[-1][0] >= 1.0:
            samples.append((time.monotonic(), _compressor_rss(stack)))
        return await outcomes_recorded(stack.store, accepted.request_id) >= images

    await stack.wait_for(completed, 120 + images, f"{images} images of {tag}", interval=0.2)
    if side is not None:
        await side
    cpu_after = _cpu_snapshot(stack)

    doc = await request_doc(stack.store, accepted.request_id)
    created = doc["created_at"]
    latencies = [
        (at - created).total_seconds() for at in await outcome_times(stack.store, accepted.request_id)
    ]
    middle = started + (time.monotonic() - started) / 2
    halves = {
        name: (
            max((s[name] for t, s in samples if t < middle and name in s), default=0),
            max((s[name] for t, s in samples if t >= middle and name in s), default=0),
        )
        for name in stack.compressors
    }
    result = BatchResult(
        request_id=accepted.request_id,
        compressors=len(stack.compressors),
        images=images,
        compressed=doc["no_img_compressed"],
        failed=doc["no_img_failed"],
        seconds=max(latencies),
        upload_seconds=accepted.seconds,
        latency_p50=percentile(latencies, 50),
        latency_p99=percentile(latencies, 99),
        bytes_in=doc["bytes_in"],
        bytes_out=doc["bytes_out"],
        memory=stack.memory(),
        cpu={name: cpu_after.get(name, 0.0) - before for name, before in cpu_before.items()},
        compressor_rss=halves,
    )
    log.info(
        "batch_done",
        tag=tag,
        compressors=result.compressors,
        images=images,
        images_per_s=round(result.images_per_s, 1),
        failed=result.failed,
    )
    return result


async def scaling_series(
    stack: BenchStack, http: aiohttp.ClientSession, counts: list[int], images: int
) -> list[BatchResult]:
    results = []
    for count in counts:
        await stack.set_compressors(count)
        results.append(await run_batch(stack, http, images, f"scale-{count}"))
    return results


@dataclass
class StatusLoad:
    batch: BatchResult
    load: LoadResult

    @property
    def p50(self) -> float:
        return percentile(self.load.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.load.latencies, 99)


async def status_under_load(
    stack: BenchStack, http: aiohttp.ClientSession, images: int, rate: float, seconds: float
) -> StatusLoad:
    """GET /status/{id} (the default page) at `rate` per second while that request's batch runs."""
    loads: list[LoadResult] = []

    async def load(request_id: str) -> None:
        loads.append(await fixed_rate(http, f"{stack.api}/status/{request_id}", rate, seconds))

    batch = await run_batch(stack, http, images, "status-load", alongside=load)
    return StatusLoad(batch, loads[0])


async def status_page_bytes(http: aiohttp.ClientSession, api: str, request_id: str) -> int:
    async with http.get(f"{api}/status/{request_id}") as response:
        body = await response.read()
    if response.status != 200:
        raise RuntimeError(f"GET /status answered {response.status}")
    return len(body)


async def _published(stack: BenchStack, request_id: str) -> bool:
    doc = await request_doc(stack.store, request_id)
    return doc["published_chunks"] == doc["row_chunks"] and "outbox_pending" not in doc


@dataclass
class PageSize:
    images: int
    pending_bytes: int  # the default page of a request this size, before any image is done


async def page_size(stack: BenchStack, http: aiohttp.ClientSession, images: int) -> PageSize:
    """Needs no compressors running: the request is accepted, measured, then its queued work dropped."""
    accepted = await upload(http, stack.api, product_csv(stack.origin_url, "page", images))
    size = await status_page_bytes(http, stack.api, accepted.request_id)
    await stack.wait_for(lambda: _published(stack, accepted.request_id), 120, "the page request published")
    await stack.broker.purge("compressor")
    return PageSize(images, size)


@dataclass
class LargeUpload:
    rows: int
    csv_bytes: int
    seconds_to_202: float
    rss_before: int  # the upload service, freshly started
    hwm_accepted: int  # its peak RSS once the 202 is out: validating and storing the CSV
    hwm_published: int  # ... and once every event is queued (the outbox relay publishing)
    queue_seconds: float  # from the 202 until the broker holds every message
    db_publish_seconds: float  # created_at -> published_at, as the relay recorded it

    @property
    def messages_per_s(self) -> float:
        return self.rows / self.queue_seconds if self.queue_seconds > 0 else 0.0


async def large_upload(stack: BenchStack, http: aiohttp.ClientSession, rows: int) -> LargeUpload:
    """A `rows`-row CSV, one URL per row, with no compressor running; its messages are purged after.
    Restart the upload service first for its peak RSS to measure this upload alone."""
    await stack.broker.purge("compressor")
    before = stack.memory()["upload"].main
    data = product_csv(stack.origin_url, "large", rows, per_row=1)
    accepted = await upload(http, stack.api, data)
    accepted_at = time.monotonic()
    hwm_accepted = stack.memory()["upload"].main.hwm

    async def all_queued() -> bool:
        return (await stack.broker.state("compressor")).messages >= rows

    await stack.wait_for(all_queued, 300, f"{rows} messages queued", interval=0.02)
    queue_seconds = time.monotonic() - accepted_at
    await stack.wait_for(lambda: _published(stack, accepted.request_id), 60, "the outbox finishing")
    doc = await request_doc(stack.store, accepted.request_id)
    hwm_published = stack.memory()["upload"].main.hwm
    await stack.broker.purge("compressor")
    return LargeUpload(
        rows=rows,
        csv_bytes=len(data),
        seconds_to_202=accepted.seconds,
        rss_before=before.rss,
        hwm_accepted=hwm_accepted,
        hwm_published=hwm_published,
        queue_seconds=queue_seconds,
        db_publish_seconds=(doc["published_at"] - doc["created_at"]).total_seconds(),
    )
