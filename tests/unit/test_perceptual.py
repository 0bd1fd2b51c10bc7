"""quality=auto's parts: our use of the SSIMULACRA2 package, the sample, and the search."""

from __future__ import annotations

import random
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from ssimulacra2 import compute_ssimulacra2

from services.compressor import encoding, perceptual
from tests import images


def png(im: Image.Image) -> BytesIO:
    out = BytesIO()
    im.save(out, "PNG")
    out.seek(0)
    return out


def jpeg_decoded(im: Image.Image, quality: int) -> Image.Image:
    return Image.open(BytesIO(encoding.encode(im.copy(), "JPEG", quality, None))).convert("RGB")


@pytest.mark.parametrize("quality", [20, 60, 90])
def test_the_reference_scores_exactly_as_the_package_does(quality: int) -> None:
    source = images.detailed_photo(160, 120, seed=4)
    distorted = jpeg_decoded(source, quality)
    ours = perceptual.Reference(source).score(distorted)
    assert ours == pytest.approx(compute_ssimulacra2(png(source), png(distorted)), abs=1e-9)


def test_scores_rank_qualities_and_an_identical_image_scores_100() -> None:
    source = images.varied_photo("mixed", 160, 120)
    scorer = perceptual.Scorer(Image.open(BytesIO(source)))
    assert scorer.score(Image.open(BytesIO(source))) == pytest.approx(100.0)
    decoded = Image.open(BytesIO(source)).convert("RGB")
    assert scorer.score(jpeg_decoded(decoded, 20)) < scorer.score(jpeg_decoded(decoded, 80)) < 100


def test_transparent_images_are_judged_over_dark_and_light_and_the_worse_counts() -> None:
    rgba = Image.open(BytesIO(images.png_with_alpha(160, 120))).convert("RGBA")
    washed = rgba.copy()
    washed.putalpha(rgba.getchannel("A").point(lambda a: a * 3 // 4))  # visible only over a background
    scorer = perceptual.Scorer(rgba)
    over = [
        perceptual.Reference(view).score(other)
        for view, other in zip(scorer._views(rgba), scorer._views(washed), strict=True)
    ]
    assert scorer.score(washed) == pytest.approx(min(over)) and min(over) < 90


# --- the sample -----------------------------------------------------------------------------------------


def test_small_images_are_their_own_sample() -> None:
    im = images.photo(300, 200)
    assert perceptual.sample(im) is im


@pytest.mark.parametrize("size", [(1200, 900), (900, 1600), (3000, 200), (3000, 100), (2000, 96), (2000, 90)])
def test_the_sample_is_a_mosaic_of_aligned_tiles_of_the_image(size: tuple[int, int]) -> None:
    im = images.photo(*size)
    mosaic = perceptual.sample(im)
    if min(size) < perceptual.TILE or size[0] * size[1] <= perceptual.WHOLE_UP_TO:
        assert mosaic is im
        return
    t = perceptual.TILE
    assert mosaic.width * mosaic.height <= t * t * (perceptual.GRID_TILES + perceptual.BUSY_TILES + 4)
    pixels, tiles = np.asarray(im), np.asarray(mosaic)
    crops = {
        pixels[y : y + t, x : x + t].tobytes()
        for y in range(0, size[1] - t + 1, 16)
        for x in range(0, size[0] - t + 1, 16)
    }
    for row in range(mosaic.height // t):
        for column in range(mosaic.width // t):
            assert tiles[row * t : (row + 1) * t, column * t : (column + 1) * t].tobytes() in crops


def test_the_sample_includes_the_busiest_part_of_a_packshot_on_white(monkeypatch: pytest.MonkeyPatch) -> None:
    """An even grid over a product shot sees mostly white; the printed label must be in the sample."""
    im = images.product_photo(1200, 900, seed=1)

    def label_pixels() -> int:
        return int((np.asarray(perceptual.sample(im).convert("L")) < 40).sum())

    with_busiest = label_pixels()
    monkeypatch.setattr(perceptual, "BUSY_TILES", 0)
    assert with_busiest > 2 * label_pixels() and with_busiest > 500


def test_aligned_tiles_are_coded_as_in_the_full_image() -> None:
    """Why the sample predicts the full image: a JPEG of the mosaic decodes, tile for tile, to the same
    pixels as the full image's JPEG (but the outermost pixel, where chroma upsampling meets a neighbour)."""
    im = images.detailed_photo(900, 700, seed=3)
    mosaic = perceptual.sample(im)
    t = perceptual.TILE
    source, tiles = np.asarray(im), np.asarray(mosaic)
    where = {
        source[y : y + t, x : x + t].tobytes(): (x, y)
        for y in range(0, 700 - t + 1, 16)
        for x in range(0, 900 - t + 1, 16)
    }
    full = np.asarray(jpeg_decoded(im, 50), dtype=int)
    coded = np.asarray(jpeg_decoded(mosaic, 50), dtype=int)
    inside = (slice(1, t - 1), slice(1, t - 1))
    for row in range(mosaic.height // t):
        for column in range(mosaic.width // t):
            cell = (slice(row * t, (row + 1) * t), slice(column * t, (column + 1) * t))
            x, y = where[tiles[cell].tobytes()]
            assert np.array_equal(full[y : y + t, x : x + t][inside], coded[cell][inside])


# --- the search -----------------------------------------------------------------------------------------


def counting(measure: dict[int, float]) -> tuple[list[int], object]:
    asked: list[int] = []

    def probe(quality: int) -> float:
        asked.append(quality)
        return measure[quality]

    return asked, probe


@pytest.mark.parametrize("guess", [1, 30, 50, 95])
@pytest.mark.parametrize("target", [5.0, 37.2, 66.6, 94.0])
def test_the_search_finds_the_lowest_quality_meeting_the_target(guess: int, target: float) -> None:
    curve = {q: 100 * (1 - np.exp(-q / 30)) for q in range(1, 96)}  # rising, flattening like real scores
    asked, probe = counting(curve)
    quality, score, probes = perceptual.search(probe, target, guess, 1, 95)  # type: ignore[arg-type]
    expected = min(q for q in curve if curve[q] >= target)
    assert (quality, score, probes) == (expected, curve[expected], len(set(asked)))
    assert len(asked) == len(set(asked)) <= 10  # nothing measured twice; a guess far off costs a few more


def test_the_search_takes_about_five_probes_on_curves_like_real_ones() -> None:
    """Saturating curves with noise, targets across the useful range, the default's guess: bisection
    would take 6-7 probes every time."""
    rng = random.Random(1)
    probes = []
    for _ in range(500):
        scale, reach, offset, noise = (
            rng.uniform(10, 50),
            rng.uniform(70, 95),
            rng.uniform(-20, 10),
            rng.uniform(0, 3),
        )
        curve = {
            q: offset + reach * (1 - np.exp(-q / scale)) + rng.uniform(-noise, noise) for q in range(1, 96)
        }
        probes.append(perceptual.search(curve.__getitem__, rng.uniform(40, 75), 50, 1, 95)[2])
    assert sum(probes) / len(probes) < 5.2


def test_a_target_beyond_reach_gives_the_highest_quality_and_one_within_gives_the_lowest() -> None:
    curve = {q: 40 + q / 10 for q in range(1, 96)}
    assert perceptual.search(curve.__getitem__, 60.0, 50, 1, 95)[:2] == (95, curve[95])
    assert perceptual.search(curve.__getitem__, 10.0, 50, 1, 95)[:2] == (1, curve[1])


def test_on_a_wobbly_curve_the_answer_still_meets_the_target_with_the_step_below_missing_it() -> None:
    rng = random.Random(7)
    for _ in range(200):
        curve = {q: q * 0.8 + rng.uniform(-6, 6) for q in range(1, 96)}
        target = rng.uniform(10, 70)
        quality, score, _ = perceptual.search(curve.__getitem__, target, rng.randint(1, 95), 1, 95)
        assert score == curve[quality] >= target or quality == 95
        assert quality == 1 or curve[quality - 1] < target or quality == 95


def test_choose_quality_scores_the_sample_and_falls_back_for_tiny_images() -> None:
    im = images.smooth_photo(200, 150, seed=5)
    choice = perceptual.choose_quality(
        im, lambda sample, q: encoding.encode(sample, "JPEG", q, None), 60.0, guess=50, fallback=50
    )
    assert choice.score is not None and choice.score >= 60 and 2 <= choice.probes <= 10
    tiny = perceptual.choose_quality(images.photo(20, 20), lambda s, q: b"", 70.0, guess=50, fallback=44)
    assert tiny == perceptual.QualityChoice(44, None, 0)
