"""`quality=auto`: per image, the lowest quality whose SSIMULACRA2 score meets a target.

The metric. SSIMULACRA2 (from the JPEG XL project, now maintained by Cloudinary, who built it to drive
automatic quality) scores a compressed image against its source on a 0-100 scale anchored to human
ratings: 30 low, 50 medium, 70 high, 90 visually lossless. It is designed for exactly this decision
(compression artefacts: blocking, ringing, blur, colour bleeding, across scales), it is what current
encoder comparisons report, and it installs here from PyPI (`ssimulacra2`, BSD, numpy + scipy, no
model weights). Butteraugli and DSSIM have no maintained PyPI package here; plain SSIM/PSNR are blind to
much of what people see. The package scores the pair of images in one call; we call its own building
blocks so the source's half (colour transform, pyramid, blurs) is computed once per image rather than once
per probe. tests/unit/test_perceptual.py holds us to the package's own score.

The sample. Scoring costs ~1 us per pixel per probe, too much for a full 2 MP image several times over, so
the search runs on a sample: a mosaic of 96x96 tiles aligned to 16 px, 16 spread evenly over the image
plus the 4 busiest (most luminance gradient) of the rest. JPEG (and mostly WebP) code 8x8 / 16x16 blocks
independently, so aligned tiles are coded exactly as in the full image (tests/unit/test_perceptual.py), and
the mosaic's score predicts the full image's. A downscaled copy does not: shrinking changes what the
encoder sees (within 25 points at 1/3 scale, 10 at 1/2, over noisy, smooth and detailed photos). The busiest
tiles are for product shots on white, where an even grid sees mostly background and misses the label:
over the bench's 20-image corpus at 5 qualities (scores 30-80), the grid alone predicted within 13.4
points (product shots +5.3 on average), grid plus busiest tiles within 9.4 (mean +1.8, sd 2.7; product
shots -1.4). Images of up to 1.5x the mosaic's pixels are scored whole.

The search. Scores rise with quality, so we look for the boundary: a first probe at a guess for the
target, then steps by the observed slope until the target is bracketed, then interpolation alternating
with bisection, to one quality step. It takes 3-5 probes; the bench reports the cost per image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from ssimulacra2 import ssimulacra2 as s2

TILE = 16 * 6  # 96 px, aligned to JPEG's 16 px MCUs and WebP's macroblocks
GRID_TILES = 16  # spread evenly
BUSY_TILES = 4  # the busiest of the rest
WHOLE_UP_TO = int(TILE * TILE * (GRID_TILES + BUSY_TILES) * 1.5)  # pixels: smaller images are scored whole
MIN_SIDE = 32  # smaller images are below SSIMULACRA2's window: auto falls back to the default quality
ALPHA_BACKGROUNDS = (26, 230)  # transparent images are judged over dark and light, the worse counting
SLOPE = 0.7  # score points per quality step, a prior for the first step (JPEG photos around the middle)
# The first probe: the median quality the search chose over the bench's corpus (20 varied photos) for
# targets 50, 60 and 70, per format; interpolated between them, extended beyond by the nearest slope.
FIRST_GUESS = {
    "JPEG": ((50, 23.5), (60, 32.0), (70, 54.0)),
    "WEBP": ((50, 23.5), (60, 37.0), (70, 59.0)),
    "AVIF": ((50, 39.0), (60, 45.0), (70, 53.0)),
}
MAX_STEP = 30  # quality steps one probe may jump before the target is bracketed


@dataclass(frozen=True)
class QualityChoice:
    quality: int
    score: float | None  # the sample's score at `quality`; None when the image is too small to score
    probes: int  # encodes and scores it took


# The package's sRGB-to-linear curve for every 8-bit value: a lookup gives the same numbers 8x faster.
_LINEAR = s2.srgb_to_linear(np.arange(256, dtype=np.float64))


def _linear(im: Image.Image) -> np.ndarray:
    return _LINEAR[np.asarray(im.convert("RGB"))]


class Reference:
    """SSIMULACRA2 with its source side computed once: `score(distorted)` is the package's score."""

    def __init__(self, source: Image.Image) -> None:
        linear = _linear(source)
        self._scales = []  # per scale: the source in XYB, its blurred square and its blurred mean
        for _ in range(s2.kNumScales):
            if linear.shape[0] < 8 or linear.shape[1] < 8:
                break
            xyb = s2.make_positive_xyb(s2.linear_rgb_to_xyb(linear))
            self._scales.append((xyb, s2.blur_image(xyb * xyb), s2.blur_image(xyb)))
            linear = s2.downsample(linear, 2, 2)

    def score(self, distorted: Image.Image) -> float:
        linear = _linear(distorted)
        total = s2.Msssim()
        for number, (xyb, blurred_sq, mu1) in enumerate(self._scales):
            if number:
                linear = s2.downsample(linear, 2, 2)
            other = s2.make_positive_xyb(s2.linear_rgb_to_xyb(linear))
            mu2 = s2.blur_image(other)
            scale = s2.MsssimScale()
            scale.avg_ssim = s2.ssim_map(
                mu1, mu2, blurred_sq, s2.blur_image(other * other), s2.blur_image(xyb * other)
            )
            scale.avg_edgediff = s2.edge_diff_map(xyb, mu1, other, mu2)
            total.scales.append(scale)
        return float(total.score())


class Scorer:
    """Scores decoded images against `source` in any of our modes: L and RGB directly, RGBA over a dark
    and a light background (the worse counts), as the reference SSIMULACRA2 tool does."""

    def __init__(self, source: Image.Image) -> None:
        self._alpha = source.mode == "RGBA"
        self._references = [Reference(view) for view in self._views(source)]

    def _views(self, im: Image.Image) -> list[Image.Image]:
        if not self._alpha:
            return [im]
        rgba = im.convert("RGBA")
        return [
            Image.alpha_composite(Image.new("RGBA", im.size, (grey, grey, grey, 255)), rgba)
            for grey in ALPHA_BACKGROUNDS
        ]

    def score(self, distorted: Image.Image) -> float:
        views = self._views(distorted)
        return min(ref.score(view) for ref, view in zip(self._references, views, strict=True))


def sample(im: Image.Image) -> Image.Image:
    """`im` itself if small, else a mosaic of aligned tiles: a grid spread evenly over it, plus the
    busiest tiles elsewhere (see the module docstring)."""
    width, height = im.size
    if width * height <= WHOLE_UP_TO or min(width, height) < TILE:
        return im
    across = max(1, min(width // TILE, GRID_TILES, round(math.sqrt(GRID_TILES * width / height))))
    down = max(1, min(height // TILE, GRID_TILES // across))
    spots = [
        (
            (width - TILE) * column // max(1, across - 1) // 16 * 16,
            (height - TILE) * row // max(1, down - 1) // 16 * 16,
        )
        for row in range(down)
        for column in range(across)
    ]
    spots += _busiest(im, spots, BUSY_TILES)
    columns = math.ceil(math.sqrt(len(spots)))
    rows = math.ceil(len(spots) / columns)
    mosaic = Image.new(im.mode, (columns * TILE, rows * TILE))
    for cell in range(columns * rows):  # cells past the last tile repeat the first ones
        x, y = spots[cell % len(spots)]
        mosaic.paste(im.crop((x, y, x + TILE, y + TILE)), (cell % columns * TILE, cell // columns * TILE))
    return mosaic


def _busiest(im: Image.Image, taken: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """Up to `count` aligned tiles with the most luminance gradient, overlapping neither `taken` nor each
    other: where edges and text are, which a product shot on white keeps out of an even grid."""
    gray = np.asarray(im.convert("L"), dtype=np.int16)
    gradient = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    rows, columns = gradient.shape[0] // 16, gradient.shape[1] // 16
    blocks = gradient[: rows * 16, : columns * 16].reshape(rows, 16, columns, 16).sum(axis=(1, 3))
    span = TILE // 16  # a tile is span x span blocks: sum each such window through a summed-area table
    table = np.pad(blocks.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    busy = table[span:, span:] - table[:-span, span:] - table[span:, :-span] + table[:-span, :-span]
    chosen: list[tuple[int, int]] = []
    for flat in np.argsort(busy, axis=None)[::-1]:
        if len(chosen) >= count:
            break
        row, column = divmod(int(flat), busy.shape[1])
        spot = (column * 16, row * 16)
        if all(abs(spot[0] - x) >= TILE or abs(spot[1] - y) >= TILE for x, y in taken + chosen):
            chosen.append(spot)
    return chosen


def first_guess(fmt: str, target: float) -> int:
    """Where the search starts for `fmt` and `target` (see FIRST_GUESS)."""
    points = FIRST_GUESS.get(fmt, FIRST_GUESS["JPEG"])
    (t0, q0), (t1, q1) = next(((a, b) for a, b in itertools.pairwise(points) if target <= b[0]), points[-2:])
    return min(max(round(q0 + (target - t0) * (q1 - q0) / (t1 - t0)), 1), 95)


def choose_quality(
    im: Image.Image,
    encode: Callable[[Image.Image, int], bytes],
    target: float,
    guess: int,
    fallback: int,
    low: int = 1,
    high: int = 95,
) -> QualityChoice:
    """The lowest quality in [low, high] at which `encode`d `im` scores at least `target` (`high` if none
    does). Images too small to score get `fallback`."""
    if min(im.size) < MIN_SIDE:
        return QualityChoice(fallback, None, 0)
    probe = sample(im)
    scorer = Scorer(probe)

    def measure(quality: int) -> float:
        decoded = Image.open(BytesIO(encode(probe, quality)))
        return scorer.score(decoded)

    quality, score, probes = search(measure, target, guess, low, high)
    return QualityChoice(quality, score, probes)


def search(
    measure: Callable[[int], float], target: float, guess: int, low: int, high: int
) -> tuple[int, float, int]:
    """(lowest quality meeting `target`, its score, probes), for a `measure` that rises with quality.

    `missed` is the highest quality known to miss the target and `met` the lowest known to meet it; the
    answer is `met` once they are adjacent, so the quality just below the answer was measured and missed
    even where scores wobble. Each probe aims at the integer just above the estimated crossing (a good
    estimate ends the search one probe later, just below it); bisection steps in when two estimates
    together have not halved the bracket. On synthetic curves like real ones (saturating, with noise) it
    takes 4.8 probes on average against bisection's 6.7.
    """
    scores: dict[int, float] = {}
    order: list[int] = []
    missed, met = low - 1, high + 1
    widths: list[int] = []
    quality = min(max(guess, low), high)
    while True:
        scores[quality] = measure(quality)
        order.append(quality)
        if scores[quality] >= target:
            met = quality
        else:
            missed = quality
        widths.append(met - missed)
        if met - missed <= 1:
            break
        if missed in scores and met in scores:
            stalled = len(widths) >= 3 and widths[-1] > widths[-3] / 2
            crossing = (missed + met) / 2 if stalled else _interpolated(scores, target, missed, met)
        else:
            crossing = _stepped(scores, order, target)
        quality = min(max(math.ceil(crossing), missed + 1), met - 1)
    if met > high:  # even the highest quality misses: the best we can do
        return high, scores[high], len(scores)
    return met, scores[met], len(scores)


def _interpolated(scores: dict[int, float], target: float, missed: int, met: int) -> float:
    span = scores[met] - scores[missed]
    if span <= 0:
        return (missed + met) / 2
    return missed + (target - scores[missed]) * (met - missed) / span


def _stepped(scores: dict[int, float], order: list[int], target: float) -> float:
    """Before the target is bracketed: a step from the last probe along the local slope (the last two
    probes', else the prior), a quarter longer so that it tends to bracket, and at most MAX_STEP."""
    last = order[-1]
    slope = SLOPE
    if len(order) >= 2 and (run := last - order[-2]) != 0:
        observed = (scores[last] - scores[order[-2]]) / run
        slope = observed if observed >= 0.05 else SLOPE
    step = (target - scores[last]) / slope * 1.25
    return last + max(-MAX_STEP, min(MAX_STEP, step))
