"""The image codec on real images made by Pillow (tests/images.py): formats, safety, colour, privacy, size."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from io import BytesIO

import pytest
from PIL import Image, ImageFile

from services.compressor import codec, encoding
from services.compressor.codec import CompressedImage, ImageRejected, compress
from tests import images


def decode(data: bytes) -> Image.Image:
    im = Image.open(BytesIO(data))
    im.load()
    return im


def px(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = im.getpixel(xy)
    assert isinstance(value, tuple), f"{im.mode} pixel {value!r} is not a tuple"
    return value


def close(actual: Sequence[int], expected: Sequence[int], tolerance: int) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def rejected(data: bytes, **kwargs: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        compress(data, **kwargs)
    return caught.value


def no_private_metadata(data: bytes) -> None:
    """Neither the bytes nor what Pillow parses out of them carry EXIF, XMP, comments or our secrets."""
    for secret in (images.SECRET, images.SERIAL.encode(), b"ACME", b"Snapper", b"Exif\0\0", b"xmpmeta"):
        assert secret not in data
    im = decode(data)
    assert not codec._METADATA_KEYS & im.info.keys()
    assert not im.getexif()


# --- basics ---------------------------------------------------------------------------------------------------


def test_photo_jpeg_is_reencoded_smaller_at_the_same_size() -> None:
    original = images.jpeg_photo(320, 240, quality=92)
    result = compress(original, quality=50)
    assert result.content_type == "image/jpeg"
    assert not result.kept_original
    assert len(result.data) < len(original) * 0.7
    out = decode(result.data)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (320, 240))
    assert (result.width, result.height) == (320, 240)


def test_quality_controls_size() -> None:
    original = images.jpeg_photo(320, 240, quality=95)
    assert len(compress(original, quality=20).data) < len(compress(original, quality=80).data)
    with pytest.raises(ValueError):
        compress(original, quality=0)


def test_results_and_rejections_cross_process_boundaries() -> None:
    result = compress(images.jpeg_photo())
    assert pickle.loads(pickle.dumps(result)) == result
    error = pickle.loads(pickle.dumps(ImageRejected("image data is truncated", "truncated")))
    assert isinstance(error, ImageRejected)
    assert (error.reason, error.kind, str(error)) == ("image data is truncated", "truncated", error.reason)


# --- hostile and broken input ---------------------------------------------------------------------------------


def test_bomb_is_refused_from_the_header_before_decoding() -> None:
    # 81 MP: under Pillow's own limit (~89 MP), over ours. Its pixel data is a few bytes, so had we decoded
    # it we would report it truncated, not too large.
    error = rejected(images.png_bomb_header(9000, 9000))
    assert error.kind == "bomb"
    assert "9000x9000" in error.reason


def test_bomb_limit_does_not_depend_on_pillows_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert rejected(images.png_bomb_header(9000, 9000)).kind == "bomb"


def test_max_pixels_boundary() -> None:
    data = images.jpeg_photo(64, 48)
    assert compress(data, max_pixels=64 * 48).width == 64
    assert rejected(data, max_pixels=64 * 48 - 1).kind == "bomb"


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_pillows_bomb_warning_and_error_are_rejections(side: int) -> None:
    # 100 MP makes Pillow warn, 10 GP makes it raise; a generous max_pixels must not let either through.
    error = rejected(images.png_bomb_header(side, side), max_pixels=10**12)
    assert error.kind == "bomb"


def test_frames_count_towards_the_pixel_budget() -> None:
    data = images.animated_gif(32, 32, frames=10)
    assert rejected(data, max_pixels=32 * 32 * 10 - 1).kind == "bomb"
    assert compress(data, max_pixels=32 * 32 * 10).content_type in ("image/webp", "image/gif")


@pytest.mark.parametrize(
    "data",
    [
        images.truncated(images.jpeg_photo(128, 128)),
        images.truncated(images.png_photo(128, 128)),
        images.truncated(images.animated_gif(64, 64, frames=6), 0.7),
        images.jpeg_photo(128, 128)[:-2],  # only the end-of-image marker is missing
    ],
    ids=["jpeg", "png", "gif-frames", "jpeg-eoi"],
)
def test_truncated_images_are_rejected(data: bytes) -> None:
    assert rejected(data).kind == "truncated"


@pytest.mark.parametrize(
    "data", [images.corrupt(images.png_photo(128, 128)), images.corrupt(images.jpeg_photo(128, 128))]
)
def test_corrupt_images_are_rejected(data: bytes) -> None:
    assert rejected(data).kind == "corrupt"


def test_broken_header_of_a_known_format() -> None:
    assert rejected(images.png_photo()[:20]).kind == "truncated"
    error = rejected(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))
    assert (error.kind, error.reason) == ("corrupt", "corrupt or truncated PNG header")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"", "unknown"),
        (b"<html>not an image</html>", "unknown"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS"),  # would run Ghostscript
        (b"P6\n4 4\n255\n" + bytes(48), "unknown"),  # PPM: Pillow reads it, we do not offer to
    ],
)
def test_unsupported_formats_are_rejected(data: bytes, named: str) -> None:
    error = rejected(data)
    assert error.kind == "unsupported"
    assert named in error.reason


def test_loading_truncated_images_stays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        compress(images.jpeg_photo())


# --- orientation and metadata -----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    result = compress(images.jpeg_rotated(orientation), quality=90)
    out = decode(result.data)
    assert out.size == (result.width, result.height) == (60, 40)
    assert close(px(out, (5, 5)), (255, 0, 0), 40)  # red stays top-left
    assert close(px(out, (55, 35)), (0, 0, 255), 40)
    assert close(px(out, (55, 5)), (0, 0, 255), 40)
    no_private_metadata(result.data)  # including the orientation tag, which would rotate it again


@pytest.mark.parametrize(
    "data",
    [
        images.jpeg_with_metadata(orientation=1),
        images.png_with_text(orientation=1),
        images.png_with_text(orientation=1, alpha=True),  # the WebP path
    ],
    ids=["jpeg", "png", "png-alpha"],
)
def test_private_metadata_is_stripped(data: bytes) -> None:
    assert images.SECRET in data or images.SERIAL.encode() in data  # the input really has it
    result = compress(data)
    assert not result.kept_original
    no_private_metadata(result.data)


@pytest.mark.parametrize("alpha", [False, True])
def test_icc_profile_is_kept(alpha: bool) -> None:
    icc = images.srgb_icc()
    im = images.photo(64, 48)
    if alpha:
        im.putalpha(images.alpha_mask(64, 48))
    buf = BytesIO()
    im.save(buf, "PNG", icc_profile=icc)
    result = compress(buf.getvalue())
    assert result.content_type == ("image/webp" if alpha else "image/jpeg")
    assert decode(result.data).info.get("icc_profile") == icc


def test_icc_profile_for_other_channels_is_dropped() -> None:
    buf = BytesIO()
    images.photo().convert("L").save(buf, "JPEG", icc_profile=images.srgb_icc())  # RGB profile, gray pixels
    out = decode(compress(buf.getvalue()).data)
    assert out.mode == "L"
    assert "icc_profile" not in out.info


# --- colour -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [
        ((255, 0, 0, 0), (0, 255, 255)),
        ((0, 255, 255, 0), (255, 0, 0)),
        ((0, 0, 0, 255), (0, 0, 0)),
        ((0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_cmyk_without_profile_converts_to_rgb(
    cmyk: tuple[int, int, int, int], rgb: tuple[int, int, int]
) -> None:
    result = compress(images.jpeg_cmyk(cmyk=cmyk), quality=90)
    out = decode(result.data)
    assert (result.content_type, out.mode) == ("image/jpeg", "RGB")
    assert close(px(out, (16, 16)), rgb, 12)


def test_cmyk_with_profile_converts_through_it() -> None:
    # The toy press profile prints 100% cyan as (0, 158, 224); a profile-less conversion says (0, 255, 255).
    result = compress(images.jpeg_cmyk(cmyk=(255, 0, 0, 0), icc=images.cmyk_icc()), quality=90)
    out = decode(result.data)
    assert out.mode == "RGB"
    assert close(px(out, (16, 16)), (0, 158, 224), 12)
    assert "icc_profile" not in out.info  # the pixels are sRGB now; a CMYK profile would be wrong


def test_cmyk_with_unusable_profile_falls_back_to_plain_conversion() -> None:
    broken = images.cmyk_icc()[:300]  # header says CMYK, the tags are cut off
    out = decode(compress(images.jpeg_cmyk(cmyk=(255, 0, 0, 0), icc=broken), quality=90).data)
    assert close(px(out, (16, 16)), (0, 255, 255), 12)


# --- transparency -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        images.png_with_alpha(),
        images.png_gray_alpha(),
        images.png_palette(transparent=True),
        images.webp_image(alpha=True),
    ],
    ids=["rgba", "la", "palette", "webp"],
)
def test_transparency_survives_as_webp(data: bytes) -> None:
    result = compress(data)
    assert result.content_type == "image/webp"
    out = decode(result.data).convert("RGBA")
    assert px(out, (0, 24))[3] == 0  # left edge: transparent
    right = px(out, (63, 24))
    assert right[3] == 255
    assert max(right[:3]) > 40  # opaque and not turned black


def test_alpha_that_hides_nothing_is_encoded_as_jpeg() -> None:
    result = compress(images.png_rgba_opaque(128, 96))
    assert result.content_type == "image/jpeg"
    assert decode(result.data).mode == "RGB"


def test_alpha_wider_than_webp_allows_falls_back_to_png() -> None:
    im = Image.new("RGBA", (encoding.WEBP_MAX_SIDE + 1, 2), (10, 200, 30, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))
    assert encoding.choose_format(True, im.size, None) == "PNG"
    assert px(decode(encoding.encode(im, "PNG", 50, None)), (0, 0))[3] == 0


def test_opaque_wider_than_jpeg_allows_falls_back_to_png() -> None:
    size = (encoding.JPEG_MAX_SIDE + 1, 1)
    assert encoding.choose_format(False, size, None) == "PNG"
    assert decode(encoding.encode(Image.new("RGB", size), "PNG", 50, None)).size == size


# --- other modes and formats ------------------------------------------------------------------------------


def test_palette_without_transparency_becomes_rgb_jpeg() -> None:
    data = images.png_palette(128, 96)
    result = compress(data)
    assert (result.content_type, decode(result.data).mode) == ("image/jpeg", "RGB")
    expected = px(decode(data).convert("RGB"), (64, 48))
    assert isinstance(expected, tuple)
    assert close(px(decode(result.data), (64, 48)), expected, 40)


def test_grayscale_stays_grayscale() -> None:
    result = compress(images.png_grayscale(128, 96))
    assert (result.content_type, decode(result.data).mode) == ("image/jpeg", "L")


def test_16_bit_is_scaled_not_clipped() -> None:
    data = images.png_16bit(128, 96)
    assert decode(data).mode == "I;16"
    result = compress(data, quality=95)
    out = decode(result.data)
    assert (result.content_type, out.mode) == ("image/jpeg", "L")
    expected = images.photo(128, 96).convert("L")
    for xy in [(10, 10), (64, 48), (120, 90)]:
        actual, wanted = out.getpixel(xy), expected.getpixel(xy)
        assert isinstance(actual, int) and isinstance(wanted, int)
        assert abs(actual - wanted) <= 12  # clipping would make nearly everything 255


def test_bilevel_image() -> None:
    out = decode(compress(images.gray_1bit_png(256, 256)).data)
    assert out.size == (256, 256)


def test_webp_input_becomes_jpeg_when_opaque() -> None:
    result = compress(images.webp_image(128, 96))
    assert result.content_type == "image/jpeg"
    assert (result.width, result.height) == (128, 96)


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("WEBP", "RGBA"), ("PNG", "L")]
)
def test_one_pixel_images(fmt: str, mode: str) -> None:
    result = compress(images.one_pixel(fmt, mode))
    assert (result.width, result.height) == (1, 1)
    assert decode(result.data).size == (1, 1)


def test_mpo_uses_its_first_image_only() -> None:
    data = images.mpo(128, 96)
    assert getattr(decode(data), "n_frames", 1) == 2
    result = compress(data)
    assert result.content_type == "image/jpeg"
    assert getattr(decode(result.data), "n_frames", 1) == 1


# --- animation ------------------------------------------------------------------------------------------------


def frames_of(data: bytes) -> list[tuple[Image.Image, int]]:
    im = Image.open(BytesIO(data))
    frames = []
    for index in range(getattr(im, "n_frames", 1)):
        im.seek(index)
        im.load()
        frames.append((im.convert("RGBA"), int(im.info.get("duration", 0))))
    return frames


def test_animated_gif_becomes_animated_webp_with_its_timing() -> None:
    durations = [40, 80, 120, 160, 200, 240]
    data = images.animated_gif(128, 128, frames=6, durations=durations, loop=0)
    result = compress(data)
    assert (result.content_type, result.kept_original) == ("image/webp", False)
    assert len(result.data) < len(data)
    out = Image.open(BytesIO(result.data))
    assert out.info["loop"] == 0
    frames = frames_of(result.data)
    assert [duration for _, duration in frames] == durations
    for index, (frame, _) in enumerate(frames):
        x0, y0, _, _ = images.square_box(index, 6, 128, 128)
        assert close(px(frame, (x0 + 5, y0 + 5)), (255, 0, 0, 255), 30)  # the square moved along
        assert close(px(frame, (x0 + 5, 120)), (255, 255, 255, 255), 30)


@pytest.mark.parametrize(
    "data",
    [
        # Four frames: the squares do not overlap, so libwebp stores only opaque pixels and leaves the
        # "has alpha" flag unset unless we set it (see codec._webp_alpha_flagged).
        images.animated_gif(128, 128, frames=4, transparent=True, loop=None),
        images.animated_webp(128, 128, frames=4),
        images.animated_png(128, 128, frames=4),
    ],
    ids=["gif", "webp", "apng"],
)
def test_animation_keeps_transparency(data: bytes) -> None:
    result = compress(data)
    assert result.content_type == "image/webp"
    frames = frames_of(result.data)
    assert len(frames) == 4
    for index, (frame, _) in enumerate(frames):
        x0, y0, _, _ = images.square_box(index, 4, 128, 128)
        assert close(px(frame, (x0 + 5, y0 + 5)), (255, 0, 0, 255), 30)
        assert px(frame, (x0 + 5, 120))[3] == 0  # background stays see-through, not black


def test_animation_that_plays_once_still_plays_once() -> None:
    result = compress(images.animated_gif(128, 128, frames=6, loop=None))
    assert Image.open(BytesIO(result.data)).info["loop"] == 1


# --- never larger, never leaking ------------------------------------------------------------------------------


def test_tiny_image_keeps_its_original_bytes() -> None:
    data = images.one_pixel("PNG")
    result = compress(data)
    assert result == CompressedImage(data, "image/png", True, 1, 1)


def test_small_clean_gif_animation_is_kept_verbatim() -> None:
    data = images.animated_gif(16, 16, frames=3, transparent=True)
    result = compress(data)
    assert (result.data, result.content_type, result.kept_original) == (data, "image/gif", True)


def test_low_quality_jpeg_with_metadata_is_kept_without_its_metadata() -> None:
    data = images.jpeg_with_metadata(256, 256, quality=25)
    reencoded = encoding.encode(decode(data), "JPEG", 50, None)
    stripped = codec.strip_jpeg(data)
    assert stripped is not None and len(stripped) < len(reencoded) < len(data)  # the case we mean to test
    result = compress(data, quality=50)
    assert (result.data, result.content_type, result.kept_original) == (stripped, "image/jpeg", True)
    no_private_metadata(result.data)
    assert decode(result.data).tobytes() == decode(data).tobytes()  # lossless: same pixels


def test_rotated_original_is_not_kept_even_when_reencoding_grows_it() -> None:
    data = images.jpeg_with_metadata(256, 256, orientation=6, quality=10)
    result = compress(data, quality=90)
    assert len(result.data) > len(data)  # keeping the original would have been smaller ...
    assert not result.kept_original  # ... but stripped of EXIF it would lie on its side
    no_private_metadata(result.data)


def test_gif_with_comment_is_not_kept_even_when_reencoding_grows_it() -> None:
    data = images.animated_gif(16, 16, frames=3, transparent=True, comment=b"by " + images.SECRET)
    result = compress(data)
    assert len(result.data) > len(data)
    assert (result.content_type, result.kept_original) == ("image/webp", False)
    assert images.SECRET not in result.data


def test_small_png_with_text_is_kept_without_its_text() -> None:
    im = Image.new("RGB", (16, 16), (20, 90, 200))
    buf = BytesIO()
    im.save(buf, "PNG", pnginfo=_png_text())
    result = compress(buf.getvalue())
    assert (result.content_type, result.kept_original) == ("image/png", True)
    no_private_metadata(result.data)
    assert decode(result.data).tobytes() == im.tobytes()


def _png_text() -> object:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", images.SECRET.decode())
    return info


# --- the lossless strippers -----------------------------------------------------------------------------------


def test_strip_jpeg_handles_progressive_restart_markers_and_trailers() -> None:
    buf = BytesIO()
    images.photo(200, 150).save(
        buf,
        "JPEG",
        quality=80,
        progressive=True,
        restart_marker_rows=1,
        exif=images.private_exif(),
        comment=images.SECRET,
        icc_profile=images.srgb_icc(),
    )
    data = buf.getvalue() + b"trailing video " + images.SECRET  # e.g. a motion photo's appended clip
    stripped = codec.strip_jpeg(data)
    assert stripped is not None
    assert images.SECRET not in stripped and b"Exif" not in stripped
    out = decode(stripped)
    assert out.info["icc_profile"] == images.srgb_icc()
    assert out.tobytes() == decode(data).tobytes()


def test_strip_jpeg_drops_a_jfif_thumbnail() -> None:
    data = images.jpeg_with_metadata(256, 256, quality=10)
    assert data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\x00"
    thumbnail = bytes([255, 0, 0]) * 4 + images.SECRET  # 2x2 red pixels, and what a crop would hide
    app0 = data[6:18] + bytes((2, 2)) + thumbnail
    with_thumbnail = data[:2] + b"\xff\xe0" + (len(app0) + 2).to_bytes(2, "big") + app0
    with_thumbnail += data[4 + int.from_bytes(data[4:6], "big") :]
    assert Image.open(BytesIO(with_thumbnail)).size == (256, 256)

    stripped = codec.strip_jpeg(with_thumbnail)
    assert stripped is not None and images.SECRET not in stripped
    assert stripped[2:6] == b"\xff\xe0\x00\x10" and stripped[6:18] == data[6:18]
    assert stripped[18:20] == b"\x00\x00"  # no thumbnail
    assert decode(stripped).tobytes() == decode(with_thumbnail).tobytes()
    result = compress(with_thumbnail, quality=90)  # re-encoding would grow it: the original is kept
    assert result.kept_original and images.SECRET not in result.data


def test_strip_jpeg_gives_up_on_what_it_does_not_understand() -> None:
    data = images.jpeg_photo()
    assert codec.strip_jpeg(data[:-2]) is None  # no end of image
    assert codec.strip_jpeg(data[:100]) is None
    assert codec.strip_jpeg(images.png_photo()) is None


def test_strip_png_keeps_pixels_and_colour_chunks_only() -> None:
    buf = BytesIO()
    images.photo().save(
        buf, "PNG", pnginfo=_png_text(), exif=images.private_exif(), icc_profile=images.srgb_icc()
    )
    data = buf.getvalue()
    stripped = codec.strip_png(data + b"junk")
    assert stripped is not None
    assert images.SECRET not in stripped and b"eXIf" not in stripped
    out = decode(stripped)
    assert out.info["icc_profile"] == images.srgb_icc()
    assert out.tobytes() == decode(data).tobytes()
    assert codec.strip_png(data[: len(data) // 2]) is None
