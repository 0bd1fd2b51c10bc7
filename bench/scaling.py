"""The scaling section: does throughput grow with compressor replicas? Measured on one machine by pinning.

`python -m bench --section scaling [--scaling-images N] [--quick] [--work DIR] [--out DIR]` runs it alone;
`make bench` runs it after the others. It writes its section of `<out>/benchmarks.md` in place (with the
capacity calculation for a 1,000,000-image import) and its figures to `<work>/scaling.json`.

1. **Costs**: one batch through the whole system (2 compressors, unpinned), with every process's CPU time
   from /proc: what each image costs each part (compressor, codec, status, gateway, database, broker).
2. **Scaling**: the compressors alone, as replicas on cores of their own. The status service is stopped,
   so its queue collects the outcomes, and the gateway's outbox window is opened to the whole batch, so
   the compressor queue is full at once. Each point starts N compressors with one codec worker each and
   pins each (every thread of it and of its codec process, with os.sched_setaffinity) to a core of its
   own, then times a batch from its upload until its last outcome is in the status queue. N = 1, then 2.
   Everything else (the gateway, the database, RabbitMQ, the image origin, this process) is pinned to the
   remaining cores when the machine has any. On a 2-core machine there are none: each point then confines
   the whole system to its compressors' cores (1 core, then 2), so the ratio compares the system on one
   core with the system on two, instead of giving the 1-replica point a second core for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

import aiohttp
import structlog

from bench import machine
from bench.config import Config, parse
from bench.corpus import ensure_corpus
from bench.pipeline import MACHINE, _cpu_snapshot, run_batch
from bench.procstat import children
from bench.stack import BenchStack
from bench.workload import product_csv, upload

log = structlog.get_logger()

JSON_NAME = "scaling.json"
REPLICAS = (1, 2)
TARGET_RATIO = 1.8
OPEN_WINDOW = "1000000"  # the outbox window during the scaling points: the whole batch queued at once


@dataclass
class Point:
    compressors: int
    cores: list[int]  # the core of each compressor
    images: int
    seconds: float  # upload sent -> the last outcome in the status queue
    cpu: dict[str, float]  # CPU seconds of each process during the point
    outside_share: float  # of the machine, used meanwhile by processes that are not the system's

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ScalingResults:
    argv: str
    machine: dict[str, object]
    cores: list[int]  # the cores this run could use
    rest_cores: list[int] | None  # where everything but the compressors was pinned; None: on theirs
    costs: dict[str, float]  # CPU-ms per image, by process, through the whole system
    cost_batch: dict[str, float]  # images, images/s, compressors of the costs batch
    bytes_out_per_image: float
    bytes_in_per_image: float
    points: list[Point] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        one, two = (self.point(n) for n in REPLICAS)
        return two.images_per_s / one.images_per_s if one.images_per_s else 0.0

    def point(self, compressors: int) -> Point:
        return next(p for p in self.points if p.compressors == compressors)


def pin(pid: int, cores: set[int]) -> dict[int, set[int]]:
    """Pin every thread of `pid` and of its descendants to `cores`; their previous affinities, by thread
    id. Processes started later by a pinned one (a replaced codec worker) inherit its affinity."""
    family, before, todo = children(), {}, [pid]
    while todo:
        process = todo.pop()
        with contextlib.suppress(OSError):  # gone meanwhile
            for task in os.listdir(f"/proc/{process}/task"):
                tid = int(task)
                with contextlib.suppress(OSError):
                    before[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, cores)
        todo.extend(family.get(process, []))
    return before


def unpin(before: dict[int, set[int]]) -> None:
    for tid, cores in before.items():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cores)


async def measure(config: Config) -> ScalingResults:
    corpus = await asyncio.to_thread(ensure_corpus, config.corpus_dir, config.corpus)
    run_dir = config.work_dir / "scaling-run"
    stack = await BenchStack.start(run_dir, corpus.directory)
    cores = sorted(os.sched_getaffinity(0))
    spare = cores[max(REPLICAS) :]
    pinned: dict[int, set[int]] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            results = await _costs(config, stack, http, cores, spare)
            await stack.set_compressors(0)
            await stack.restart("upload", IMAGEPIPE_OUTBOX_WINDOW=OPEN_WINDOW)
            await asyncio.to_thread(stack.supervisor.stop, "status", stack.settings.shutdown_grace + 5)
            if spare:  # everything that is not a compressor, off the compressors' cores
                pinned = _pin_rest(stack, set(spare))
            for replicas in REPLICAS:
                confined = {} if spare else _pin_rest(stack, set(cores[:replicas]))
                try:
                    results.points.append(await _point(config, stack, http, replicas, cores))
                finally:
                    unpin(confined)
    finally:
        unpin(pinned)
        await stack.close()
    return results


async def _costs(
    config: Config, stack: BenchStack, http: aiohttp.ClientSession, cores: list[int], spare: list[int]
) -> ScalingResults:
    await stack.set_compressors(2)
    log.info("scaling_costs_batch", images=config.scaling_images)
    batch = await run_batch(stack, http, config.scaling_images, "costs")
    return ScalingResults(
        argv=config.argv,
        machine=machine.describe(stack.broker.version),
        cores=cores,
        rest_cores=spare or None,
        costs={name: s / batch.images * 1000 for name, s in batch.system_cpu.items()},
        cost_batch={"images": batch.images, "images_per_s": batch.images_per_s, "compressors": 2},
        bytes_out_per_image=batch.bytes_out / batch.images,
        bytes_in_per_image=batch.bytes_in / batch.images,
    )


def _pin_rest(stack: BenchStack, cores: set[int]) -> dict[int, set[int]]:
    pids = [stack.pid(name) for name in stack.supervisor.processes if name not in stack.compressors]
    pids += [os.getpid()] + ([stack.broker_pid] if stack.broker_pid else [])
    before: dict[int, set[int]] = {}
    for pid in pids:
        before |= pin(pid, cores)
    return before


async def _point(
    config: Config, stack: BenchStack, http: aiohttp.ClientSession, replicas: int, cores: list[int]
) -> Point:
    """`replicas` compressors, one codec worker each, each pinned to a core of its own: one batch timed."""
    await stack.stop_compressors()
    for n in range(replicas):
        name = f"compressor-{n + 1}"
        stack.supervisor.start_service("compressor", name, IMAGEPIPE_CODEC_WORKERS="1")
        stack.compressors.append(name)

    async def consuming() -> bool:
        return (await stack.broker.state("compressor")).consumers == replicas

    await stack.wait_for(consuming, 120, f"{replicas} compressors consuming")
    mine = [cores[n % len(cores)] for n in range(replicas)]
    for name, core in zip(stack.compressors, mine, strict=True):
        pin(stack.pid(name), {core})
    images = config.scaling_images
    baseline = (await stack.broker.state("status")).messages
    cpu_before, started = _cpu_snapshot(stack), time.monotonic()
    log.info("scaling_point", compressors=replicas, cores=mine, images=images)
    accepted = await upload(http, stack.api, product_csv(stack.origin_url, f"scale-{replicas}", images))

    async def all_out() -> bool:
        return (await stack.broker.state("status")).messages >= baseline + accepted.images

    await stack.wait_for(all_out, 120 + images, f"{images} outcomes", interval=0.05)
    seconds, cpu_after = time.monotonic() - started, _cpu_snapshot(stack)
    cpu = {name: cpu_after.get(name, 0.0) - spent for name, spent in cpu_before.items()}
    machine_busy = cpu.pop(MACHINE)
    outside = max(0.0, machine_busy - sum(cpu.values())) / (len(cores) * seconds)
    point = Point(
        compressors=replicas,
        cores=mine,
        images=images,
        seconds=seconds,
        cpu=cpu,
        outside_share=outside,
    )
    log.info("scaling_point_done", compressors=replicas, images_per_s=round(point.images_per_s, 1))
    return point


def run(config: Config) -> ScalingResults:
    from bench import scaling_report

    results = asyncio.run(measure(config))
    config.work_dir.mkdir(parents=True, exist_ok=True)
    (config.work_dir / JSON_NAME).write_text(json.dumps(as_json(results), indent=1))
    scaling_report.write(results, config.out_dir)
    return results


def main(argv: list[str]) -> None:
    run_and_print(parse(argv))


def run_and_print(config: Config) -> None:
    results = run(config)
    verdict = "PASS" if results.ratio >= TARGET_RATIO else "MISS"
    print(f"{verdict}  2 compressors on 2 cores >= {TARGET_RATIO}x one on one core: {results.ratio:.2f}x")
    log.info(
        "scaling_written",
        report=str(config.out_dir / "benchmarks.md"),
        results=str(config.work_dir / JSON_NAME),
    )


def as_json(results: ScalingResults) -> dict[str, object]:
    data = asdict(results)
    data["ratio"] = results.ratio
    for point, raw in zip(results.points, data["points"], strict=True):
        raw["images_per_s"] = point.images_per_s
    return data
