"""Encoding a prepared image (L, RGB or RGBA, already upright and resized) into its output format.

Which format (`choose_format`):
* No `format` asked: JPEG for opaque images, lossy WebP with lossless alpha for transparent ones; past
  WebP's 16383 px (or JPEG's 65500 px) side limit, PNG, so it at least works.
* `format` asked: that format, always. `jpeg` on a transparent image flattens it onto white first
  (`flatten_onto_white`: product shots sit on white; black, what dropping alpha gives, never looks
  intended). An image too large for the asked format has no output (None), and fails with a reason.

Parameters, each measured (docs/benchmarks.md; /work notes of the issue that chose them):
* JPEG: optimised Huffman tables, ~8% smaller for ~4 ms per 2 MP.
* WebP: method 2 of 0-6. For a 2 MP RGBA photo method 2 takes ~60 ms, method 4 ~150 ms for ~7% fewer
  bytes, method 6 ~1.5 s.
* AVIF (libavif with libaom, through Pillow): speed 9 of 0-10, one thread. Decode + encode of a 1 MP photo
  costs ~5.5x JPEG's at speed 9; 8 costs ~17x, 7 ~36x and Pillow's default 6 ~50x, for 0-3% fewer
  bytes at the same quality setting. One thread, because the codec pool already runs one image per core.
"""

from __future__ import annotations

from io import BytesIO

from PIL import Image, features

from shared.image_options import OutputFormat

JPEG_MAX_SIDE = 65500
WEBP_MAX_SIDE = 16383
AVIF_MAX_SIDE = 65536  # libaom refuses larger frames
WEBP_METHOD = 2
JPEG_OPTIMIZE = True
AVIF_SPEED = 9

CONTENT_TYPES = {"JPEG": "image/jpeg", "WEBP": "image/webp", "AVIF": "image/avif", "PNG": "image/png"}
MAX_SIDES = {"JPEG": JPEG_MAX_SIDE, "WEBP": WEBP_MAX_SIDE, "AVIF": AVIF_MAX_SIDE}
LOSSY = frozenset({"JPEG", "WEBP", "AVIF"})
# Pillow's wheels encode AVIF; a Pillow built from source without libavif does not.
AVIF_AVAILABLE = bool(features.check("avif"))


def choose_format(alpha: bool, size: tuple[int, int], asked: OutputFormat | None) -> str | None:
    """The Pillow format to encode into, or None when the asked format cannot hold an image this large."""
    side = max(size)
    if asked is not None:
        name = asked.name
        return name if side <= MAX_SIDES[name] else None
    if alpha:
        return "WEBP" if side <= WEBP_MAX_SIDE else "PNG"
    return "JPEG" if side <= JPEG_MAX_SIDE else "PNG"


def animation_format(asked: OutputFormat | None) -> str:
    """Animations are animated WebP, or animated AVIF when asked; JPEG has no animation, so `jpeg` leaves
    them animated WebP rather than dropping every frame but the first."""
    return "AVIF" if asked is OutputFormat.AVIF else "WEBP"


def flatten_onto_white(im: Image.Image) -> Image.Image:
    """An RGBA image composited onto opaque white, as RGB."""
    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, im).convert("RGB")


def encode(im: Image.Image, fmt: str, quality: int, icc: bytes | None) -> bytes:
    """`im` as `fmt` at `quality` (ignored by PNG), carrying only the ICC profile.

    Only explicit parameters go in: Pillow copies some metadata (JPEG comments, a PNG's profile, EXIF)
    from `im.info` unless told otherwise, so `info` is emptied first.
    """
    im.info = {}
    if fmt == "WEBP" and im.mode == "L":  # WebP has no grayscale: RGB, and a gray profile no longer fits
        im, icc = im.convert("RGB"), None
    extra = {"icc_profile": icc} if icc else {}
    out = BytesIO()
    if fmt == "JPEG":
        im.save(out, "JPEG", quality=quality, optimize=JPEG_OPTIMIZE, **extra)
    elif fmt == "WEBP":
        im.save(out, "WEBP", quality=quality, method=WEBP_METHOD, **extra)
    elif fmt == "AVIF":
        im.save(out, "AVIF", quality=quality, speed=AVIF_SPEED, max_threads=1, **extra)
    else:
        im.save(out, "PNG", **extra)
    return out.getvalue()


def animation_params(fmt: str, quality: int) -> dict[str, object]:
    """Encoder parameters of an animation in `fmt` (WebP or AVIF), beside frames, timing and profile."""
    if fmt == "AVIF":
        return {"quality": quality, "speed": AVIF_SPEED, "max_threads": 1}
    return {"quality": quality, "method": WEBP_METHOD}
