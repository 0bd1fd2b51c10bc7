"""The codec ceiling: how many images per second `compress()` alone sustains on every core, with no I/O.

Each worker reads the corpus once, before timing starts, and is then handed only indices, so the number
measures decode + re-encode and nothing else: the most the pipeline could ever reach on this machine.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.compressor.codec import compress

_images: list[bytes] = []


@dataclass(frozen=True)
class Ceiling:
    images: int
    workers: int
    seconds: float
    bytes_in: int
    bytes_out: int

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def _load(paths: list[Path]) -> None:
    _images[:] = [p.read_bytes() for p in paths]


def _compress(index: int, quality: int, max_pixels: int) -> tuple[int, int]:
    data = _images[index % len(_images)]
    return len(data), len(compress(data, quality, max_pixels).data)


def measure_ceiling(paths: list[Path], images: int, workers: int, quality: int, max_pixels: int) -> Ceiling:
    context = multiprocessing.get_context("spawn")  # as the compressor's codec pool starts its workers
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_load, initargs=(paths,)) as pool:
        # Warm-up: start every worker and load the corpus (and Pillow's codecs) before the clock runs.
        list(pool.map(_compress, range(workers), [quality] * workers, [max_pixels] * workers))
        chunk = max(1, images // (workers * 16))
        started = time.perf_counter()
        sizes = list(
            pool.map(_compress, range(images), [quality] * images, [max_pixels] * images, chunksize=chunk)
        )
        seconds = time.perf_counter() - started
    return Ceiling(
        images=images,
        workers=workers,
        seconds=seconds,
        bytes_in=sum(s[0] for s in sizes),
        bytes_out=sum(s[1] for s in sizes),
    )
