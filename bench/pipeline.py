"""The benchmark's phases against a running BenchStack: timed batches, the scaling series, status reads
under load, the size of a status page, and a large upload's acceptance and queueing."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from bench.procstat import cpu_seconds, machine_busy_seconds
from bench.stack import BenchStack, ProcessMemory
from bench.stats import percentile
from bench.statusload import LoadResult, closed_loop, fixed_rate
from bench.workload import outcome_times, outcomes_recorded, product_csv, request_doc, upload

log = structlog.get_logger()

MACHINE = "whole machine"  # in BatchResult.cpu: every process's CPU, the benchmark's and any other
RSS_EVERY = 0.5  # seconds between samples of the compressors' memory during a batch
HARNESS = ("origin",)  # processes standing in for the outside world: not part of the system's cost


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
    cpu: dict[str, float]  # CPU seconds each process used during the batch, and MACHINE
    cpu_window: float  # wall seconds over which `cpu` was counted (upload to completion seen)
    compressor_rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # max RSS, 1st and 2nd half
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def system_cpu(self) -> dict[str, float]:
        """CPU seconds of the system's own processes (RabbitMQ included; the origin and the rest not)."""
        return {n: s for n, s in self.cpu.items() if n != MACHINE and n not in HARNESS and s > 0.005}

    @property
    def cpu_ms_per_image(self) -> float:
        return sum(self.system_cpu.values()) / self.images * 1000

    @property
    def outside_share(self) -> float:
        """Share of the machine's capacity that processes outside the run used during the batch."""
        ours = sum(s for n, s in self.cpu.items() if n != MACHINE)
        return max(0.0, self.cpu.get(MACHINE, 0.0) - ours) / (self.cores * self.cpu_window)


def _cpu_snapshot(stack: BenchStack) -> dict[str, float]:
    snapshot = stack.cpu()
    if stack.broker_pid is not None:
        snapshot["rabbitmq"] = cpu_seconds(stack.broker_pid)
    snapshot[MACHINE] = machine_busy_seconds()
    return snapshot


def _compressor_rss(stack: BenchStack) -> dict[str, int]:
    """Each compressor's resident memory now: its own process plus its codec workers."""
    return {
        name: m.main.rss + sum(w.rss for w in m.workers)
        for name, m in stack.memory(stack.compressors).items()
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
    cpu_before, window_start = _cpu_snapshot(stack), time.monotonic()
    accepted = await upload(http, stack.api, product_csv(stack.origin_url, tag, images))
    side = asyncio.create_task(alongside(accepted.request_id)) if alongside else None
    started = time.monotonic()
    samples: list[tuple[float, dict[str, int]]] = []

    async def completed() -> bool:
        if not samples or time.monotonic() - samples[-1][0] >= RSS_EVERY:
            samples.append((time.monotonic(), _compressor_rss(stack)))
        return await outcomes_recorded(stack.mongo, accepted.request_id) >= images

    await stack.wait_for(completed, 120 + images, f"{images} images of {tag}", interval=0.2)
    if side is not None:
        await side
    cpu_after, window = _cpu_snapshot(stack), time.monotonic() - window_start

    doc = await request_doc(stack.mongo, accepted.request_id)
    created = doc["created_at"]
    latencies = [
        (at - created).total_seconds() for at in await outcome_times(stack.mongo, accepted.request_id)
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
        cpu_window=window,
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

    @property
    def lag_p99(self) -> float:
        return percentile(self.load.lags, 99)


async def status_under_load(
    stack: BenchStack, http: aiohttp.ClientSession, images: int, rate: float, seconds: float
) -> StatusLoad:
    """GET /status/{id} (the default page) at `rate` per second while that request's batch runs."""
    loads: list[LoadResult] = []

    async def load(request_id: str) -> None:
        loads.append(await fixed_rate(http, f"{stack.api}/status/{request_id}", rate, seconds))

    batch = await run_batch(stack, http, images, "status-load", alongside=load)
    return StatusLoad(batch, loads[0])


async def status_capacity(
    http: aiohttp.ClientSession, api: str, request_id: str, concurrency: int, seconds: float
) -> LoadResult:
    """How many default-page reads per second the API sustains with nothing else running."""
    return await closed_loop(http, f"{api}/status/{request_id}", concurrency, seconds)


@dataclass(frozen=True)
class StatusPage:
    bytes: int
    products: int  # products on the page: the API's default page size


async def status_page(http: aiohttp.ClientSession, api: str, request_id: str) -> StatusPage:
    """The default GET /status/{id} response (no paging parameters), weighed."""
    async with http.get(f"{api}/status/{request_id}") as response:
        body = await response.read()
    if response.status != 200:
        raise RuntimeError(f"GET /status answered {response.status}")
    return StatusPage(len(body), len(json.loads(body).get("product_details") or []))


async def _published(stack: BenchStack, request_id: str) -> bool:
    doc = await request_doc(stack.mongo, request_id)
    return doc["published_chunks"] == doc["row_chunks"] and "outbox_pending" not in doc


@dataclass
class PageSize:
    images: int
    pending: StatusPage  # the default page of a request this size, before any image is done


async def page_size(stack: BenchStack, http: aiohttp.ClientSession, images: int) -> PageSize:
    """Needs no compressors running: the request is accepted, measured, then its queued work dropped (the
    outbox meters it, so what is queued is its first window)."""
    accepted = await upload(http, stack.api, product_csv(stack.origin_url, "page", images))
    page = await status_page(http, stack.api, accepted.request_id)
    window = min(images, stack.settings.outbox_window)

    async def first_window_queued() -> bool:
        return (await stack.broker.state("compressor")).messages >= window

    await stack.wait_for(first_window_queued, 120, "the page request's first window queued")
    await stack.broker.purge("compressor")
    return PageSize(images, page)


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
    doc = await request_doc(stack.mongo, accepted.request_id)
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
