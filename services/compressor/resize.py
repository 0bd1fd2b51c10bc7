"""Fitting images into the caller's box (`max_width`, `max_height`): aspect kept, never upscaled.

The box is about the image as it is seen, so sizes are worked out after EXIF orientation: a phone photo
stored 4000x3000 with "rotate 90" is 3000 wide in the box.

JPEGs shrunk by 2x or more are decoded at reduced scale (`draft`: libjpeg's DCT scaling to 1/2, 1/4 or
1/8) to the smallest scale still at least as large as the result, and finished with Lanczos. Measured on
1920x1440 photos (noisy, smooth, detailed) resized and re-encoded at quality 50, against a full decode
with Lanczos: 2-5x less CPU, for 0.0-1.9 (typically ~0.5) SSIMULACRA2 points. Other formats are
resampled with Lanczos directly, with Pillow's reducing gap of 3 (an integer box reduction first, which
its documentation calls indistinguishable from fair resampling in most cases, and is much faster).
"""

from __future__ import annotations

from PIL import Image, ImageFile

from shared.image_options import ImageOptions

REDUCING_GAP = 3.0
_TRANSPOSING = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The size as seen once the EXIF `orientation` is applied."""
    return (size[1], size[0]) if orientation in _TRANSPOSING else size


def fitted_size(size: tuple[int, int], options: ImageOptions) -> tuple[int, int] | None:
    """The size inside the options' box, aspect kept; None when the image already fits (never upscales)."""
    width, height = size
    scale = min(
        options.max_width / width if options.max_width else 1.0,
        options.max_height / height if options.max_height else 1.0,
    )
    if scale >= 1.0:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def draft_for_box(im: ImageFile.ImageFile, options: ImageOptions, orientation: int) -> None:
    """Before loading a JPEG: decode it at the smallest DCT scale still covering the fitted size."""
    fitted = fitted_size(upright_size(im.size, orientation), options)
    if fitted is not None:
        im.draft(im.mode, upright_size(fitted, orientation))  # draft works in stored orientation


def resized(im: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """`im` at `size` (Lanczos; Pillow premultiplies alpha, so transparent pixels do not bleed colour)."""
    if size is None or im.size == size:
        return im
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def resized_frames(im: Image.Image, count: int, size: tuple[int, int] | None) -> list[Image.Image]:
    """Every frame of an animation as RGBA, at `size` (or as it is). The caller bounded frames x pixels."""
    frames = []
    for index in range(count):
        im.seek(index)
        frames.append(resized(im.convert("RGBA"), size))
    im.seek(0)
    return frames
