"""The codec's image options on real images: the box, the format, fixed and automatic quality, and that
every output still keeps the codec's rules (orientation, metadata, ICC, transparency, never larger)."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image, JpegImagePlugin

from services.compressor import encoding, perceptual
from services.compressor.codec import CompressedImage, ImageRejected, compress
from shared.image_options import ImageOptions, OutputFormat
from tests import images
from tests.unit.test_codec import close, decode, no_private_metadata, px

WEBP, AVIF, JPEG = OutputFormat.WEBP, OutputFormat.AVIF, OutputFormat.JPEG


def with_options(data: bytes, **options: object) -> tuple[CompressedImage, Image.Image]:
    result = compress(data, 50, options=ImageOptions.model_validate(options))
    return result, decode(result.data)


# --- the box ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "size"),
    [
        ({"max_width": 100}, (100, 75)),
        ({"max_height": 50}, (67, 50)),
        ({"max_width": 100, "max_height": 30}, (40, 30)),
        ({"max_width": 1, "max_height": 1}, (1, 1)),
    ],
)
def test_the_image_fits_inside_the_box_keeping_its_aspect(box: dict[str, int], size: tuple[int, int]) -> None:
    result, out = with_options(images.jpeg_photo(400, 300), **box)
    assert out.size == size == (result.width, result.height)


def test_a_box_larger_than_the_image_never_upscales() -> None:
    data = images.jpeg_photo(400, 300, quality=92)
    result, out = with_options(data, max_width=4000, max_height=3000)
    assert out.size == (400, 300)
    assert result.data == compress(data).data


@pytest.mark.parametrize("fmt", [None, WEBP, AVIF])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_the_box_applies_to_the_image_as_seen(orientation: int, fmt: OutputFormat | None) -> None:
    """Stored sideways (60x40 shown, 40x60 stored): the box is the upright image's, and the pixels turn."""
    _, out = with_options(images.jpeg_rotated(orientation, 120, 80), max_width=60, format=fmt)
    assert out.size == (60, 40)
    rgb = out.convert("RGB")
    assert close(px(rgb, (8, 6)), (255, 0, 0), 60)  # red top-left, as a viewer shows the original
    assert close(px(rgb, (52, 34)), (0, 0, 255), 60)


def test_jpegs_shrunk_2x_or_more_are_decoded_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> object:
        answer = draft(self, mode, size)
        decoded.append(self.size)
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    _, out = with_options(images.jpeg_photo(800, 600), max_width=300)  # 2.7x: DCT-scaled to 1/2
    assert decoded == [(400, 300)] and out.size == (300, 225)
    _, out = with_options(images.jpeg_photo(800, 600), max_width=500)  # 1.6x: decoded whole
    assert decoded[1:] == [(800, 600)] and out.size == (500, 375)
    with_options(images.png_photo(800, 600), max_width=300)  # not a JPEG: no draft at all
    assert len(decoded) == 2


def test_resizing_does_not_bleed_colour_from_under_transparent_pixels() -> None:
    """The transparent half hides pure black; resampling premultiplies alpha, so the edge stays light."""
    _, out = with_options(images.png_with_alpha(400, 300), max_width=100)
    assert out.mode == "RGBA" and out.size == (100, 75)
    assert px(out, (2, 40))[3] == 0 and px(out, (97, 40))[3] == 255
    assert sum(px(out, (70, 40))[:3]) > 100  # opaque, just right of the soft band: not darkened to black


def test_a_resized_image_is_never_replaced_by_its_original() -> None:
    data = images.jpeg_with_metadata(256, 256, quality=25)  # its stripped original wins without a box
    assert compress(data).kept_original
    result, out = with_options(data, max_width=255)
    assert not result.kept_original and out.size == (255, 255)
    no_private_metadata(result.data)


# --- the format ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pillow", "mime"), [(WEBP, "WEBP", "image/webp"), (AVIF, "AVIF", "image/avif")]
)
def test_an_asked_format_is_what_comes_out(fmt: OutputFormat, pillow: str, mime: str) -> None:
    result, out = with_options(images.jpeg_photo(320, 240, quality=92), format=fmt)
    assert (result.content_type, out.format, out.size, result.quality) == (mime, pillow, (320, 240), 50)


@pytest.mark.parametrize("fmt", [JPEG, WEBP, AVIF])
def test_every_format_strips_metadata_and_keeps_the_icc_profile(fmt: OutputFormat) -> None:
    data = images.jpeg_with_metadata(128, 96, orientation=1)
    result, _ = with_options(data, format=fmt)
    no_private_metadata(result.data)
    _, out = with_options(images.jpeg_with_icc(128, 96), format=fmt)
    assert out.info.get("icc_profile") == images.srgb_icc()


def test_jpeg_flattens_transparency_onto_white() -> None:
    result, out = with_options(images.png_with_alpha(128, 96), format=JPEG)
    assert (result.content_type, out.mode) == ("image/jpeg", "RGB")
    assert close(px(out, (4, 48)), (255, 255, 255), 6)  # was transparent over black: now white
    assert not close(px(out, (124, 48)), (255, 255, 255), 30)  # the opaque half keeps its photo


@pytest.mark.parametrize("fmt", [WEBP, AVIF])
def test_webp_and_avif_keep_transparency(fmt: OutputFormat) -> None:
    _, out = with_options(images.png_with_alpha(128, 96), format=fmt)
    assert out.mode == "RGBA" and px(out, (4, 48))[3] == 0 and px(out, (124, 48))[3] == 255


@pytest.mark.parametrize("fmt", [WEBP, AVIF])
def test_grayscale_encodes_in_every_format(fmt: OutputFormat) -> None:
    result, out = with_options(images.png_grayscale(64, 48), format=fmt)
    assert out.size == (64, 48) and result.content_type == f"image/{fmt.value}"


def test_an_asked_format_is_kept_even_when_the_original_would_be_smaller() -> None:
    """A format change that needs more bytes is what the caller asked for; the same format is not."""
    data = images.one_pixel("PNG")
    assert compress(data).kept_original
    result, out = with_options(data, format=WEBP)
    assert (result.content_type, result.kept_original, out.format) == ("image/webp", False, "WEBP")
    low = images.jpeg_with_metadata(256, 256, quality=25)
    result, _ = with_options(low, format=JPEG)
    assert result.kept_original and result.content_type == "image/jpeg"


def test_an_image_too_large_for_the_asked_format_fails_with_what_to_do() -> None:
    wide = images._save(Image.new("RGB", (encoding.WEBP_MAX_SIDE + 1, 8)), "PNG")
    with pytest.raises(ImageRejected) as caught:
        compress(wide, options=ImageOptions(format=WEBP))
    assert "webp" in caught.value.reason and "max_width" in caught.value.reason
    assert caught.value.kind == "unsupported"
    assert compress(wide, options=ImageOptions(format=WEBP, max_width=16000)).width == 16000


def test_avif_without_an_avif_encoder_fails_the_image_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "AVIF_AVAILABLE", False)
    for data in (images.jpeg_photo(), images.animated_gif()):
        with pytest.raises(ImageRejected, match="cannot encode avif"):
            compress(data, options=ImageOptions(format=AVIF))


# --- fixed quality ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [None, WEBP, AVIF])
def test_an_asked_quality_replaces_the_services_default(fmt: OutputFormat | None) -> None:
    data = images.jpeg_photo(320, 240, quality=95)
    low = compress(data, 50, options=ImageOptions(quality=20, format=fmt))
    high = compress(data, 50, options=ImageOptions(quality=90, format=fmt))
    assert (low.quality, high.quality) == (20, 90) and len(low.data) < len(high.data)
    assert compress(data, 90, options=ImageOptions(format=fmt)).data == high.data


# --- animations ---------------------------------------------------------------------------------------


def frames(data: bytes) -> list[tuple[tuple[int, int], int]]:
    im = Image.open(BytesIO(data))
    found = []
    for index in range(getattr(im, "n_frames", 1)):
        im.seek(index)
        im.load()
        found.append((im.size, int(im.info.get("duration", 0))))
    return found


def test_the_box_resizes_every_frame_and_keeps_the_timing() -> None:
    data = images.animated_gif(64, 48, frames=4, durations=[100, 200, 300, 400])
    result = compress(data, options=ImageOptions(max_width=32))
    assert result.content_type == "image/webp" and (result.width, result.height) == (32, 24)
    assert frames(result.data) == [((32, 24), d) for d in (100, 200, 300, 400)]


def test_avif_animations_stay_animated() -> None:
    data = images.animated_gif(64, 48, frames=4, durations=[100, 200, 300, 400])
    result = compress(data, options=ImageOptions(format=AVIF, max_height=24))
    assert result.content_type == "image/avif"
    assert frames(result.data) == [((32, 24), d) for d in (100, 200, 300, 400)]


def test_jpeg_cannot_animate_so_animations_stay_animated_webp() -> None:
    result = compress(images.animated_gif(64, 48, frames=3), options=ImageOptions(format=JPEG))
    assert result.content_type == "image/webp" and len(frames(result.data)) == 3


def test_auto_quality_on_an_animation_is_chosen_on_its_first_frame() -> None:
    data = images.animated_webp(96, 64, frames=3)
    result = compress(data, options=ImageOptions(quality="auto", target=70, format=WEBP))
    assert result.quality is not None and result.score is not None and result.score >= 70
    assert len(frames(result.data)) == 3


# --- automatic quality --------------------------------------------------------------------------------


def score_at(data: bytes, fmt: str, quality: int) -> float:
    source = decode(data).convert("RGB")
    return perceptual.Scorer(source).score(decode(encoding.encode(source.copy(), fmt, quality, None)))


@pytest.mark.parametrize(("fmt", "pillow"), [(None, "JPEG"), (AVIF, "AVIF")])
def test_auto_picks_the_lowest_quality_that_meets_the_target(fmt: OutputFormat | None, pillow: str) -> None:
    """Small enough to be scored whole, so the search's answer can be checked exactly."""
    data = images.varied_photo("detailed", 240, 180, seed=1)
    result = compress(data, options=ImageOptions(quality="auto", target=65, format=fmt))
    assert result.quality is not None and result.score is not None
    assert result.score >= 65 and result.score == pytest.approx(score_at(data, pillow, result.quality))
    assert score_at(data, pillow, result.quality - 1) < 65


def test_auto_spends_bytes_where_they_are_needed() -> None:
    """One target: the noisy photo gets a higher quality than the smooth one, both meeting it."""
    auto = ImageOptions(quality="auto", target=60)
    noisy = compress(images.varied_photo("noisy", 240, 180, seed=2), options=auto)
    smooth = compress(images.varied_photo("smooth", 240, 180, seed=2), options=auto)
    assert noisy.quality is not None and smooth.quality is not None and noisy.quality > smooth.quality
    assert min(noisy.score or 0, smooth.score or 0) >= 60


def test_a_higher_target_never_chooses_a_lower_quality() -> None:
    data = images.varied_photo("mixed", 240, 180, seed=3)
    chosen = [compress(data, options=ImageOptions(quality="auto", target=t)).quality for t in (40, 60, 80)]
    assert chosen == sorted(chosen) and chosen[0] != chosen[-1]  # type: ignore[type-var]


def test_auto_on_a_transparent_image_judges_it_over_dark_and_light() -> None:
    result, out = with_options(images.png_with_alpha(200, 150), quality="auto", target=65)
    assert out.mode == "RGBA" and result.score is not None and result.score >= 65


def test_a_target_no_quality_reaches_gets_the_highest_quality_and_its_score() -> None:
    result = compress(images.png_with_alpha(200, 150), options=ImageOptions(quality="auto", target=95))
    assert result.quality == 95 and result.score is not None and result.score < 95


def test_images_too_small_to_score_get_the_services_quality() -> None:
    result = compress(images.jpeg_photo(31, 200, quality=95), 45, options=ImageOptions(quality="auto"))
    assert (result.quality, result.score) == (45, None)
