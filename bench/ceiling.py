"""The codec ceiling: how many images per second `compress()` alone sustains on every core, with no I/O.

Each worker reads the corpus once, before timing starts, and is then handed only indices, so the number
measures decode + re-encode and nothing else: the most the pipeline could ever reach on this machine.
The sample is split into rounds and the best round counts, since other load on the machine can only
slow a round down; the workers' CPU time gives a second, load-independent estimate.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import machine_busy_seconds
from services.compressor.codec import compress

_images: list[bytes] = []


@dataclass(frozen=True)
class Ceiling:
    images: int
    workers: int
    round_seconds: list[float]  # wall time of each round of `images // rounds` images
    cpu_seconds: float  # the workers' CPU time over every round
    machine_busy: float  # CPU seconds the whole machine used meanwhile (ours and anyone else's)
    bytes_in: int
    bytes_out: int

    @property
    def round_images(self) -> int:
        return self.images // len(self.round_seconds)

    @property
    def images_per_s(self) -> float:
        """The ceiling: the best round's rate."""
        return self.round_images / min(self.round_seconds)

    @property
    def cpu_ms_per_image(self) -> float:
        return self.cpu_seconds / self.images * 1000

    @property
    def cpu_images_per_s(self) -> float:
        """What every core would reach with the machine to itself: cores / CPU time per image."""
        return self.workers / self.cpu_seconds * self.images

    @property
    def outside_share(self) -> float:
        """Share of the machine's capacity other processes used while the ceiling was measured."""
        capacity = self.workers * sum(self.round_seconds)
        return max(0.0, self.machine_busy - self.cpu_seconds) / capacity


def _load(paths: list[Path]) -> None:
    _images[:] = [p.read_bytes() for p in paths]


def _compress(index: int, quality: int, max_pixels: int) -> tuple[int, int, float]:
    data = _images[index % len(_images)]
    started = time.process_time()
    size = len(compress(data, quality, max_pixels).data)
    return len(data), size, time.process_time() - started


def measure_ceiling(
    paths: list[Path], images: int, workers: int, quality: int, max_pixels: int, rounds: int = 3
) -> Ceiling:
    rounds = max(1, min(rounds, images))
    per_round = images // rounds
    context = multiprocessing.get_context("spawn")  # as the compressor's codec pool starts its workers
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_load, initargs=(paths,)) as pool:
        # Warm-up: start every worker and load the corpus (and Pillow's codecs) before the clock runs.
        list(pool.map(_compress, range(workers), [quality] * workers, [max_pixels] * workers))
        chunk = max(1, per_round // (workers * 16))
        results: list[tuple[int, int, float]] = []
        seconds = []
        busy_before = machine_busy_seconds()
        for n in range(rounds):
            indices = range(n * per_round, (n + 1) * per_round)
            started = time.perf_counter()
            results += pool.map(
                _compress, indices, [quality] * per_round, [max_pixels] * per_round, chunksize=chunk
            )
            seconds.append(time.perf_counter() - started)
        busy = machine_busy_seconds() - busy_before
    return Ceiling(
        images=per_round * rounds,
        workers=workers,
        round_seconds=seconds,
        cpu_seconds=sum(r[2] for r in results),
        machine_busy=busy,
        bytes_in=sum(r[0] for r in results),
        bytes_out=sum(r[1] for r in results),
    )
