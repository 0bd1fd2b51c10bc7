"""One benchmark run, start to finish: ceiling, system up, measured phases, optional profile passes,
system down, report."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import structlog

from bench import machine
from bench.ceiling import Ceiling, measure_ceiling
from bench.config import Config
from bench.corpus import Corpus, ensure_corpus
from bench.pipeline import (
    large_upload,
    page_size,
    run_batch,
    scaling_series,
    status_capacity,
    status_page,
    status_under_load,
)
from bench.procstat import machine_busy_seconds
from bench.profile import Profile, profiling
from bench.results import Results
from bench.stack import BenchStack
from shared.settings import get_settings

log = structlog.get_logger()

STATUS_CLIENTS = 8  # concurrent clients probing the status API's capacity


async def background_load(cores: int, seconds: float = 2.0) -> float:
    """Share of the machine other processes keep busy before we start: above a few percent, expect noise."""
    before = machine_busy_seconds()
    await asyncio.sleep(seconds)
    return (machine_busy_seconds() - before) / (cores * seconds)


def _address(url: str) -> str:
    """host:port of a URL, without its credentials, for the report."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}"


def describe_corpus(corpus: Corpus) -> dict[str, float]:
    pixels = corpus.pixels()
    return {
        "images": len(corpus.files),
        "min_mp": min(pixels) / 1e6,
        "max_mp": max(pixels) / 1e6,
        "mean_mp": sum(pixels) / len(pixels) / 1e6,
        "mean_kb": corpus.total_bytes / len(corpus.files) / 1000,
    }


async def run(config: Config) -> Results:
    settings = get_settings()
    cores = os.cpu_count() or 1
    corpus = await asyncio.to_thread(ensure_corpus, config.corpus_dir, config.corpus)

    background = await background_load(cores)
    if background > 0.1:
        log.warning("machine_busy_before_start", busy=f"{background:.0%}", consequence="noisy numbers")
    log.info("measuring_codec_ceiling", images=config.images, workers=cores)
    ceiling = await asyncio.to_thread(
        measure_ceiling, corpus.files, config.images, cores, settings.quality, settings.max_pixels
    )
    log.info("codec_ceiling", images_per_s=round(ceiling.images_per_s, 1))

    run_dir = config.work_dir / "run"
    await asyncio.to_thread(shutil.rmtree, run_dir, True)
    stack = await BenchStack.start(run_dir, corpus.directory)
    try:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
            results = await _measure(config, stack, http, ceiling)
            results.corpus = describe_corpus(corpus)
            results.options["background_load"] = background
            if config.profile is not None:
                try:
                    results.profiles = await _profile(config, stack, http, config.profile)
                except Exception as exc:  # the measurements stand without it
                    log.exception("profile_pass_failed")
                    results.profile_error = f"{type(exc).__name__}: {exc}"[:300]
            results.restarts = stack.restarts
            results.broker_reconnects = stack.broker.reconnects
    finally:
        await stack.close()
        await asyncio.to_thread(shutil.rmtree, run_dir / "db", True)  # logs and profiles stay
    return results


async def _measure(
    config: Config, stack: BenchStack, http: aiohttp.ClientSession, ceiling: Ceiling
) -> Results:
    settings = get_settings()
    compressors = settings.compressors
    await stack.set_compressors(compressors)
    log.info("main_batch", images=config.images, compressors=compressors)
    main = await run_batch(stack, http, config.images, "main")
    main_page = await status_page(http, stack.api, main.request_id)

    # Long enough for the status load to run against a busy system from start to end.
    load_images = max(config.scaling_images, math.ceil(main.images_per_s * (config.status_seconds + 3)))
    log.info("status_load", rps=config.status_rps, seconds=config.status_seconds, images=load_images)
    status = await status_under_load(
        stack, http, min(load_images, config.images), config.status_rps, config.status_seconds
    )

    log.info("scaling_series", compressors=config.scaling, images=config.scaling_images)
    scaling = await scaling_series(stack, http, list(config.scaling), config.scaling_images)

    await stack.set_compressors(0)
    log.info("page_size", images=config.page_images)
    page = await page_size(stack, http, config.page_images)
    capacity = await status_capacity(
        http, stack.api, main.request_id, STATUS_CLIENTS, max(1.0, config.status_seconds / 2)
    )
    log.info("large_upload", rows=config.large_rows)
    # A fresh process (its peak RSS is this upload's), with the outbox window opened to the whole upload:
    # this measures how fast the relay can publish, where make run meters each request to its window.
    await stack.restart("upload", IMAGEPIPE_OUTBOX_WINDOW=str(config.large_rows))
    large = await large_upload(stack, http, config.large_rows)
    log.info(
        "large_upload_done", seconds_to_202=round(large.seconds_to_202, 2), msg_s=round(large.messages_per_s)
    )

    return Results(
        options={
            "argv": config.argv,
            "quick": config.quick,
            "quality": settings.quality,
            "compressors": compressors,
            "codec_workers": settings.codec_workers,
            "broker": _address(settings.amqp_url),
            "database": "SecantusDB (its own, under the run folder)"
            if stack.own_database
            else "IMAGEPIPE_MONGO_URL",
        },
        machine=machine.describe(stack.broker.version),
        corpus={},
        ceiling=ceiling,
        main=main,
        main_page=main_page,
        status=status,
        status_capacity=capacity,
        scaling=scaling,
        page=page,
        large=large,
        restarts=0,
    )


async def _profile(
    config: Config, stack: BenchStack, http: aiohttp.ClientSession, py_spy: Path
) -> dict[str, list[Profile]]:
    """Profile passes, after the measured ones: a batch under status load, then a large upload."""
    out_dir = stack.run_dir / "profiles"
    passes: dict[str, list[Profile]] = {}
    await stack.set_compressors(get_settings().compressors)
    names = ("compressor-1", "status", "upload", "secantusdb")
    targets = {name: stack.pid(name) for name in names if name in stack.supervisor.processes}
    label = (
        f"Batch of {config.scaling_images:,} images with GET /status at {config.status_rps:.0f} rps "
        "(`upload` serves the API, `status` projects outcomes)"
    )
    log.info("profiling", what=label)
    async with profiling(py_spy, targets, out_dir, "batch") as session:
        await status_under_load(stack, http, config.scaling_images, config.status_rps, config.status_seconds)
    passes[label] = session.profiles

    await stack.set_compressors(0)
    await stack.restart("upload")
    targets = {
        name: stack.pid(name) for name in ("upload", "secantusdb") if name in stack.supervisor.processes
    }
    label = f"Large upload: {config.large_rows:,} rows validated, stored and published"
    log.info("profiling", what=label)
    async with profiling(py_spy, targets, out_dir, "large-upload") as session:
        await large_upload(stack, http, config.large_rows)
    passes[label] = session.profiles
    return passes
