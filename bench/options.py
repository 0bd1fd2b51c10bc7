"""The image options section: what each option costs and gives, and the calibration of `quality=auto`.

`python -m bench --section options [--quick] [--work DIR] [--out DIR]` runs it alone (codec only, one
process, no services); `make bench` runs it after the pipeline. It writes its section of
`<out>/benchmarks.md` in place and its figures to `<work>/options.json`.

For a varied corpus of photo-like JPEGs made by code (tests/images.py: smooth, noisy, detailed, product
and mixed), and for each mode (default; max_width=800; webp; avif; auto), it measures bytes and CPU time
per image of `compress()`, and scores every output with SSIMULACRA2 against its source at full size
(resized with Lanczos from a full decode for max_width, so a reduced-scale decode counts against it).
Then it calibrates `auto`: for a range of targets, the total bytes and the worst full-size score, against
fixed quality 50; the calibrated target is the highest whose bytes stay within quality 50's while its
worst image scores no worse than quality 50's worst.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path

import structlog
from PIL import Image, ImageOps

from bench import machine
from services.compressor import encoding, perceptual
from services.compressor.codec import CompressedImage, compress
from shared.image_options import DEFAULT_TARGET, ImageOptions, OutputFormat
from tests.images import PHOTO_KINDS, varied_photo

log = structlog.get_logger()

JSON_NAME = "options.json"
AVIF_COST_BOUND = 8.0  # AVIF's CPU per image may be at most this multiple of JPEG's (the default mode)
BASE_QUALITY = 50


@dataclass(frozen=True)
class OptionsSpec:
    per_kind: int = 4
    min_mp: float = 0.3
    max_mp: float = 1.0
    targets: tuple[float, ...] = (45.0, 48.0, 50.0, 51.0, 52.0, 53.0, 55.0, 60.0)
    seed: int = 12


QUICK_SPEC = OptionsSpec(per_kind=1, min_mp=0.04, max_mp=0.06, targets=(DEFAULT_TARGET,))

MODES = {
    "default": ImageOptions(),
    "max_width=800": ImageOptions(max_width=800),
    "webp": ImageOptions(format=OutputFormat.WEBP),
    "avif": ImageOptions(format=OutputFormat.AVIF),
    "auto": ImageOptions(quality="auto").resolved(),
}


@dataclass
class Mode:
    """One mode over the corpus, image by image (in corpus order)."""

    name: str
    bytes: list[int] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # full size, against the (resized) source
    qualities: list[int | None] = field(default_factory=list)
    estimates: list[float | None] = field(default_factory=list)  # auto: the score the sample predicted

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes)

    @property
    def worst(self) -> float:
        return min(self.scores)

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def spread(self) -> float:
        """Standard deviation of the scores: how even the quality is."""
        return statistics.pstdev(self.scores)

    @property
    def mean_cpu_ms(self) -> float:
        return sum(self.cpu_ms) / len(self.cpu_ms)


@dataclass
class OptionsResults:
    spec: dict[str, object]
    corpus: list[dict[str, object]]  # kind, width, height, bytes
    modes: dict[str, Mode]
    calibration: dict[str, Mode]  # by target, formatted
    search: dict[str, float]  # auto's search alone: probes and CPU-ms per image
    machine: dict[str, object]
    argv: str


class Corpus:
    """The images, and a scorer per image and output size (a source's half of the score is reused)."""

    def __init__(self, spec: OptionsSpec) -> None:
        rng = random.Random(spec.seed)
        self.items: list[tuple[str, bytes]] = []
        for number in range(spec.per_kind):
            for kind in PHOTO_KINDS:
                pixels = rng.uniform(spec.min_mp, spec.max_mp) * 1e6
                aspect = rng.choice((4 / 3, 3 / 2, 1.0, 3 / 4, 16 / 9))
                width = round((pixels * aspect) ** 0.5)
                height = max(1, round(width / aspect))
                self.items.append((kind, varied_photo(kind, width, height, spec.seed * 100 + number)))
        self._scorers: dict[tuple[int, tuple[int, int]], perceptual.Scorer] = {}

    def source(self, index: int) -> Image.Image:
        im = Image.open(BytesIO(self.items[index][1]))
        return ImageOps.exif_transpose(im).convert("RGB")

    def score(self, index: int, output: CompressedImage) -> float:
        key = (index, (output.width, output.height))
        if key not in self._scorers:
            source = self.source(index)
            if source.size != key[1]:
                source = source.resize(key[1], Image.Resampling.LANCZOS)
            self._scorers[key] = perceptual.Scorer(source)
        decoded = Image.open(BytesIO(output.data))
        return self._scorers[key].score(decoded.convert("RGB"))

    def describe(self) -> list[dict[str, object]]:
        described = []
        for kind, data in self.items:
            with Image.open(BytesIO(data)) as im:
                described.append({"kind": kind, "width": im.width, "height": im.height, "bytes": len(data)})
        return described


def run_mode(corpus: Corpus, name: str, options: ImageOptions, memo: dict[tuple[object, ...], float]) -> Mode:
    """Compress every image with `options`. Encoding is deterministic, so `memo` shares the full-size
    score of outputs that are the same (an image at quality 50 is the default and may be auto's choice)."""
    mode = Mode(name)
    for index, (_, data) in enumerate(corpus.items):
        started = time.process_time()
        output = compress(data, BASE_QUALITY, options=options)
        mode.cpu_ms.append((time.process_time() - started) * 1000)
        key = (index, output.content_type, output.width, output.height, output.quality)
        if key not in memo:
            memo[key] = corpus.score(index, output)
        mode.scores.append(memo[key])
        mode.bytes.append(len(output.data))
        mode.qualities.append(output.quality)
        mode.estimates.append(output.score)
    return mode


def measure_search(corpus: Corpus) -> dict[str, float]:
    """auto's search alone (JPEG, default target) on each full-size source: probes and CPU time."""
    probes, cpu = [], []
    for index in range(len(corpus.items)):
        source = corpus.source(index)
        started = time.process_time()
        choice = perceptual.choose_quality(
            source,
            lambda im, quality: encoding.encode(im, "JPEG", quality, None),
            DEFAULT_TARGET,
            guess=perceptual.first_guess("JPEG", DEFAULT_TARGET),
            fallback=BASE_QUALITY,
        )
        cpu.append((time.process_time() - started) * 1000)
        probes.append(choice.probes)
    return {"probes": sum(probes) / len(probes), "max_probes": max(probes), "cpu_ms": sum(cpu) / len(cpu)}


def measure(spec: OptionsSpec, argv: str = "") -> OptionsResults:
    log.info("options_corpus", images=spec.per_kind * len(PHOTO_KINDS))
    corpus = Corpus(spec)
    memo: dict[tuple[object, ...], float] = {}
    modes = {}
    for name, options in MODES.items():
        log.info("options_mode", mode=name)
        modes[name] = run_mode(corpus, name, options, memo)
    calibration = {}
    for target in spec.targets:
        log.info("options_calibration", target=target)
        options = ImageOptions(quality="auto", target=target)
        calibration[f"{target:g}"] = run_mode(corpus, f"auto, target {target:g}", options, memo)
    return OptionsResults(
        spec=asdict(spec),
        corpus=corpus.describe(),
        modes=modes,
        calibration=calibration,
        search=measure_search(corpus),
        machine=machine.describe(),
        argv=argv,
    )


# --- running it -----------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench --section options", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny corpus, one target (CI smoke test)")
    parser.add_argument("--work", type=Path, help="where options.json goes (default var/bench)")
    parser.add_argument("--out", type=Path, help="the folder of benchmarks.md (default docs/)")
    args, _ = parser.parse_known_args(argv)  # the pipeline's own options may be on the same command line
    return args


def run(quick: bool, work: Path, out: Path, argv: str = "") -> OptionsResults:
    from bench import options_report

    results = measure(QUICK_SPEC if quick else OptionsSpec(), argv)
    work.mkdir(parents=True, exist_ok=True)
    (work / JSON_NAME).write_text(json.dumps(as_json(results), indent=1))
    options_report.write(results, out)
    return results


def main(argv: list[str]) -> None:
    args = parse(argv)
    temp = Path(tempfile.mkdtemp(prefix="imagepipe-bench-")) if args.quick else None
    work = args.work or temp or Path("var/bench")
    out = args.out or (temp / "report" if temp else Path("docs"))
    run(args.quick, work.resolve(), out.resolve(), " ".join(["--section", "options", *argv]))
    log.info("options_written", report=str(out / "benchmarks.md"), results=str(work / JSON_NAME))


def as_json(results: OptionsResults) -> dict[str, object]:
    from bench import options_report

    data = asdict(results)
    data["checks"] = [asdict(c) for c in options_report.checks(results)]
    for group in ("modes", "calibration"):
        for name, mode in getattr(results, group).items():
            data[group][name].update(
                total_bytes=mode.total_bytes,
                mean=mode.mean,
                worst=mode.worst,
                spread=mode.spread,
                mean_cpu_ms=mode.mean_cpu_ms,
            )
    return data
