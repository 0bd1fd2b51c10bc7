"""The benchmark's images: photo-like JPEGs of varied sizes, generated once and cached on disk.

The same files feed the codec ceiling and the pipeline's origin, so the two measure the same work.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog
from PIL import Image

from localrun.samples import photo

log = structlog.get_logger()

ASPECTS = (4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4, 2 / 3)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CorpusSpec:
    count: int = 40
    min_mp: float = 1.0
    max_mp: float = 3.0
    seed: int = 2024

    def sizes(self) -> list[tuple[int, int]]:
        rng = random.Random(self.seed)
        sizes = []
        for _ in range(self.count):
            pixels = rng.uniform(self.min_mp, self.max_mp) * 1_000_000
            aspect = rng.choice(ASPECTS)
            width = round(math.sqrt(pixels * aspect))
            sizes.append((width, max(1, round(width / aspect))))
        return sizes


QUICK_SPEC = CorpusSpec(count=8, min_mp=0.08, max_mp=0.12)


@dataclass(frozen=True)
class Corpus:
    directory: Path
    files: list[Path]

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def pixels(self) -> list[int]:
        sizes = []
        for path in self.files:
            with Image.open(path) as im:
                sizes.append(im.width * im.height)
        return sizes


def ensure_corpus(directory: Path, spec: CorpusSpec) -> Corpus:
    """The corpus for `spec` in `directory`, generating it only if the cached one was made differently."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"photo-{n:03d}.jpg" for n in range(spec.count)]
    manifest = directory / MANIFEST
    wanted = asdict(spec)
    cached = manifest.exists() and json.loads(manifest.read_text()) == wanted
    if not (cached and all((directory / name).exists() for name in names)):
        log.info("generating_corpus", directory=str(directory), images=spec.count)
        for old in directory.glob("photo-*.jpg"):
            old.unlink()
        for seed, (name, (width, height)) in enumerate(zip(names, spec.sizes(), strict=True)):
            (directory / name).write_bytes(photo(width, height, spec.seed + seed))
        manifest.write_text(json.dumps(wanted))
    return Corpus(directory, [directory / name for name in names])
