"""The image codec: untrusted bytes in, smaller bytes out. Pure CPU work, run in a process pool.

Decisions (each has a test in tests/unit/test_codec.py):

* Output format. Opaque images become JPEG at `quality` with optimised Huffman tables (a 2 MP photo takes
  ~17 ms to decode and re-encode; grayscale stays grayscale). Images with real transparency become lossy
  WebP at `quality` with lossless alpha: WebP keeps alpha, is tens of times smaller than PNG for photos at
  a quarter of PNG's encode time, and every current browser shows it. An RGBA image whose alpha is 255
  everywhere is treated as opaque. Past WebP's 16383 px (or JPEG's 65500 px) side limit we fall back to PNG.
  (encoding.py; an asked `format` overrides this rule.)
* Image options (shared/image_options.py), each applied in its own step: the box (resize.py: after EXIF
  orientation, JPEGs decoded at reduced scale), the format (encoding.py), the quality, fixed or `auto`
  (perceptual.py). On animations: the box resizes every frame; `webp` and `jpeg` give animated WebP (JPEG
  cannot animate), `avif` animated AVIF; a fixed quality applies to every frame; `auto` searches on the
  first frame and applies its choice to all.
* Safety. Only common web/photo formats are parsed at all (`ALLOWED_FORMATS`). The pixel count is checked
  from the header, before any decoding, against `max_pixels`; Pillow's own DecompressionBombWarning is
  turned into an error as well, so the effective limit is min(max_pixels, Image.MAX_IMAGE_PIXELS).
  Truncated or corrupt data raises ImageRejected (LOAD_TRUNCATED_IMAGES stays off).
* Orientation and privacy. EXIF orientation is applied to the pixels; the output carries no EXIF (GPS,
  serial numbers), XMP, IPTC or comments: only the ICC profile, which keeps colours right.
* Colour. CMYK goes through its embedded profile to sRGB with LittleCMS when it has one (naive conversion
  makes colours garish), else through Pillow's plain conversion. A profile that no longer matches the
  output's colour space (say a gray profile on an image that became RGBA) is dropped. 16-bit images are
  scaled, not clipped, to 8 bits.
* Animation (GIF, WebP, APNG) is re-encoded, all frames, to animated WebP with the original timing and
  loop count: it keeps the animation, is much smaller than GIF and strips metadata like every other path
  (keeping GIF bytes instead would be simpler but saves nothing and keeps comments/XMP). All frames
  together must fit in `max_pixels`, so many frames cannot add up to a bomb, and there are at most
  `max_frames` of them, so neither can many tiny ones (counted without walking past the cap); frames are
  not EXIF-rotated. Whatever slips through is bounded in time by the codec pool (codec_pool.py).
  Multi-image files that are not animations (MPO from phones, multi-page TIFF) use their first image.
* Never larger, never leaking. If re-encoding does not make the image smaller, we keep the original,
  unless the caller's box or format rules it out (then the output can, rarely, be the larger one), and
  only in a form without private metadata: JPEG/MPO and PNG are stripped losslessly (their marker
  segments / chunks are copied except metadata ones); GIF, WebP, AVIF and BMP are kept verbatim only when
  they show no metadata. The original is not an option when it needs an EXIF rotation (stripping would turn
  it sideways), carries metadata we cannot strip, or is a TIFF: then the re-encoded image is returned even
  if it is larger. Privacy wins over size; it is rare because dropping metadata saves bytes too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeVar

import structlog
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from services.compressor import encoding, perceptual, resize
from shared.image_options import ImageOptions
from shared.magic import sniff

log = structlog.get_logger()
T = TypeVar("T")

# Pillow plugin ids we let parse input. "JPEG" also opens MPO (multi-image JPEG from phones).
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # only ever kept as its stripped first image, a plain JPEG
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "AVIF": "image/avif",
    "BMP": "image/bmp",
}
MAX_FRAMES = 2000  # frames of one animation, at most (each is decoded and re-encoded)
_ORIENTATION = 0x0112
# Info keys through which Pillow reports metadata that a verbatim copy would leak.
_METADATA_KEYS = frozenset({"exif", "xmp", "XML:com.adobe.xmp", "comment", "extension", "photoshop", "iptc"})
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class CompressedImage:
    data: bytes
    content_type: str  # "image/jpeg", "image/webp", "image/avif", "image/png", or a kept original's type
    kept_original: bool  # re-encoding would have grown it, so the original bytes were kept (metadata-free)
    width: int
    height: int
    quality: int | None = None  # the encoder quality used; None for a kept original or lossless PNG
    score: float | None = None  # quality=auto: the SSIMULACRA2 score measured at `quality` (on the sample)


class ImageRejected(Exception):
    """The image can never be compressed (bomb, corrupt, truncated, unsupported): retrying is pointless.

    `reason` is short and meant for humans; `kind` is one of those four words, for metrics.
    """

    def __init__(self, reason: str, kind: str = "corrupt") -> None:
        super().__init__(reason, kind)  # both in args, so the exception pickles across the process pool
        self.reason = reason
        self.kind = kind

    def __str__(self) -> str:
        return self.reason


def compress(
    data: bytes,
    quality: int = 50,
    max_pixels: int = 50_000_000,
    max_frames: int = MAX_FRAMES,
    options: ImageOptions | None = None,
) -> CompressedImage:
    """Re-encode `data` smaller at `quality` (1-100), or as `options` ask; see the module docstring."""
    options = options or ImageOptions()
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1-100, not {quality}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped the global: we would silently emit half images
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = _open(_webp_alpha_flagged(data), max_pixels)
        with im:
            if im.format in ("GIF", "WEBP", "PNG") and _decoding(lambda: getattr(im, "is_animated", False)):
                return _compress_animation(im, data, quality, max_pixels, max_frames, options)
            return _compress_still(im, data, quality, options)


# --- decoding -----------------------------------------------------------------------------------------------


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    try:
        im = Image.open(BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        sniffed = _sniff(data)
        if sniffed in ALLOWED_FORMATS:
            raise ImageRejected(f"corrupt or truncated {sniffed} header", "corrupt") from None
        raise ImageRejected(f"unsupported image format ({sniffed or 'unknown'})", "unsupported") from None
    except Exception as exc:
        raise _rejection(exc) from exc
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height:,} pixels (limit {max_pixels:,})", "bomb"
        )
    return im


def _decoding(step: Callable[[], T]) -> T:
    """Run a Pillow decoding step: the decoders are our trust boundary, so whatever they raise on hostile
    input (OSError, SyntaxError, ValueError, struct.error, ...) becomes an ImageRejected."""
    try:
        return step()
    except ImageRejected:
        raise
    except Exception as exc:
        raise _rejection(exc) from exc


def _rejection(exc: Exception) -> ImageRejected:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning | MemoryError):
        return ImageRejected(f"image too large: {exc}", "bomb")
    text = str(exc)
    if "truncated" in text.lower():
        return ImageRejected("image data is truncated", "truncated")
    return ImageRejected(f"corrupt image data ({type(exc).__name__}: {text[:120]})", "corrupt")


def _sniff(data: bytes) -> str | None:
    """The format the first bytes announce, in Pillow's spelling, for error messages only (Pillow decides
    what we decode)."""
    kind = sniff(data)
    return kind.name.upper() if kind is not None else None


# --- still images -------------------------------------------------------------------------------------------


def _compress_still(
    im: ImageFile.ImageFile, data: bytes, quality: int, options: ImageOptions
) -> CompressedImage:
    stored_size = im.size
    if options.resizes and im.format in ("JPEG", "MPO"):  # their EXIF is parsed on open, before loading
        resize.draft_for_box(im, options, _orientation(im))
    _decoding(im.load)
    orientation = _orientation(im)
    if orientation != 1:
        _decoding(lambda: ImageOps.exif_transpose(im, in_place=True))
    fmt = im.format
    info = dict(im.info)  # what the source said, before conversions copy or drop it
    out, icc, alpha = _normalise(im)
    fitted = resize.fitted_size(resize.upright_size(stored_size, orientation), options)
    out = resize.resized(out, fitted)
    output_format = encoding.choose_format(alpha, out.size, options.format)
    if output_format is None:
        raise _too_large_for(options, out.size)
    _check_encodable(output_format)
    if alpha and output_format == "JPEG":
        out, alpha = encoding.flatten_onto_white(out), False
    quality, score = _quality_for(out, output_format, quality, options)
    encoded = encoding.encode(out, output_format, quality, icc)
    if fitted is None and _keeps_format(fmt, options):
        original = _clean_original(data, fmt, info, upright=orientation == 1)
        if original is not None and len(original) <= len(encoded):
            assert fmt is not None
            return CompressedImage(original, CONTENT_TYPES[fmt], True, out.width, out.height)
    lossy = output_format in encoding.LOSSY
    return CompressedImage(
        encoded,
        encoding.CONTENT_TYPES[output_format],
        False,
        out.width,
        out.height,
        quality if lossy else None,
        score if lossy else None,
    )


# --- image options ------------------------------------------------------------------------------------------


def _keeps_format(fmt: str | None, options: ImageOptions) -> bool:
    """Whether the original may stand in for the output: not when the caller asked for another format."""
    return options.format is None or CONTENT_TYPES.get(fmt or "") == f"image/{options.format.value}"


def _too_large_for(options: ImageOptions, size: tuple[int, int]) -> ImageRejected:
    assert options.format is not None
    limit = encoding.MAX_SIDES[options.format.name]
    return ImageRejected(
        f"{size[0]}x{size[1]} is too large for {options.format.value} (at most {limit} px a side); "
        "set max_width/max_height",
        "unsupported",
    )


def _check_encodable(output_format: str) -> None:
    if output_format == "AVIF" and not encoding.AVIF_AVAILABLE:
        raise ImageRejected("this server cannot encode avif (its Pillow lacks libavif)", "unsupported")


def _quality_for(
    im: Image.Image, output_format: str, default: int, options: ImageOptions
) -> tuple[int, float | None]:
    """The encoder quality for `im`: the asked one, the service's default, or (auto) the searched one."""
    if not options.auto or output_format not in encoding.LOSSY:
        return (options.quality if isinstance(options.quality, int) else default), None
    choice = perceptual.choose_quality(
        im,
        lambda sample, quality: encoding.encode(sample, output_format, quality, None),
        options.effective_target,
        guess=perceptual.first_guess(output_format, options.effective_target),
        fallback=default,
    )
    return choice.quality, choice.score


def _orientation(im: Image.Image) -> int:
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: the pixels are fine, and the EXIF goes anyway
        return 1
    return orientation if orientation in range(1, 9) else 1  # nonsense values are ignored, like browsers do


def _normalise(im: Image.Image) -> tuple[Image.Image, bytes | None, bool]:
    """The image in L, RGB or RGBA; the ICC profile that still describes it (or None); whether it has alpha.

    Conversions happen only when needed: each one copies every pixel.
    """
    icc: bytes | None = im.info.get("icc_profile") or None
    alpha = False
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        im = im.convert("I").point(lambda v: v / 256).convert("L")  # 16 bits scaled down to 8, not clipped
    elif im.mode in ("1", "F"):
        im = im.convert("L")
    if im.has_transparency_data:  # RGBA, LA, PA, P or RGB with a transparent colour, ...
        if im.mode != "RGBA":
            im = im.convert("RGBA")
        low, _ = im.getchannel("A").getextrema()
        alpha = int(low) < 255  # type: ignore[arg-type]  # one band: (min, max) of ints
        if not alpha:  # an alpha channel that hides nothing: encode as the (much smaller) opaque image
            im = im.convert("RGB")
    elif im.mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc)
    elif im.mode not in ("L", "RGB"):  # P, YCbCr, LAB, HSV, RGBX
        im = im.convert("RGB")
    wanted = b"GRAY" if im.mode == "L" else b"RGB "
    if icc is not None and _icc_colour_space(icc) != wanted:
        icc = None  # a profile for other channels than we now have would make decoders misread colours
    return im, icc, alpha


def _icc_colour_space(icc: bytes) -> bytes:
    return icc[16:20]  # the header's "data colour space" signature: b"RGB ", b"GRAY", b"CMYK", ...


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    if icc is not None and _icc_colour_space(icc) == b"CMYK":
        try:
            profile = ImageCms.ImageCmsProfile(BytesIO(icc))
            converted = ImageCms.profileToProfile(im, profile, _SRGB, outputMode="RGB")
            assert converted is not None  # inPlace=False always returns the new image
            return converted, None  # untagged output is read as sRGB, which it now is
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            log.warning("codec_cmyk_profile_unusable", error=str(exc))
    return im.convert("RGB"), None


# --- animations ---------------------------------------------------------------------------------------------


def _compress_animation(
    im: ImageFile.ImageFile,
    data: bytes,
    quality: int,
    max_pixels: int,
    max_frames: int,
    options: ImageOptions,
) -> CompressedImage:
    fmt, info = im.format, dict(im.info)
    width, height = im.size
    frames = _decoding(lambda: _frame_count(im, max_frames))
    if frames * width * height > max_pixels:
        raise ImageRejected(
            f"animation too large: {frames} frames of {width}x{height} exceed {max_pixels:,} pixels", "bomb"
        )

    # Walking the frames decodes each one: it finds corrupt or truncated frames before the encoder does,
    # and collects the per-frame durations (the WebP encoder only reads the first frame's otherwise).
    def decode_frame(index: int) -> None:
        im.seek(index)
        im.load()

    durations, transparent = [], False
    for index in range(frames):
        _decoding(lambda: decode_frame(index))  # noqa: B023 - called right away, inside the iteration
        if im.size != (width, height):
            raise ImageRejected("unsupported animation: frames change the canvas size", "unsupported")
        durations.append(int(im.info.get("duration", 0)))
        transparent = transparent or im.has_transparency_data
    im.seek(0)
    encoded = _reencode_animation(im, frames, durations, info, transparent, quality, options)
    if (encoded.width, encoded.height) == (width, height) and _keeps_format(fmt, options):
        original = _clean_original(data, fmt, info, upright=True)
        if original is not None and len(original) <= len(encoded.data):
            assert fmt is not None
            return CompressedImage(original, CONTENT_TYPES[fmt], True, width, height)
    return encoded


def _reencode_animation(
    im: Image.Image,
    frames: int,
    durations: list[int],
    info: dict[Any, Any],
    transparent: bool,
    quality: int,
    options: ImageOptions,
) -> CompressedImage:
    """Every frame, in the box if there is one, as animated WebP (or AVIF when asked)."""
    fitted = resize.fitted_size(im.size, options)
    container = encoding.animation_format(options.format)
    _check_encodable(container)
    # Pillow encodes the source's own frames, except when they must be resized or AVIF is asked.
    resized = None
    if fitted is not None or container != "WEBP":
        resized = _decoding(lambda: resize.resized_frames(im, frames, fitted))
    first = resized[0] if resized else _decoding(lambda: im.convert("RGBA"))
    quality, score = _quality_for(first, container, quality, options)
    icc = info.get("icc_profile") or None
    try:
        encoded = _save_animation(
            resized or [im],
            container,
            durations,
            info.get("loop", 1),
            quality,
            icc if icc and _icc_colour_space(icc) == b"RGB " else None,
        )
    except (OSError, ValueError) as exc:
        raise ImageRejected(f"animation could not be re-encoded ({exc})", "unsupported") from exc
    if container == "WEBP" and transparent:
        encoded = _webp_alpha_flagged(encoded)
    width, height = fitted or im.size
    return CompressedImage(encoded, encoding.CONTENT_TYPES[container], False, width, height, quality, score)


def _save_animation(
    frames: list[Image.Image],
    container: str,
    durations: list[int],
    loop: int,
    quality: int,
    icc: bytes | None,
) -> bytes:
    """All frames (one multi-frame image, or a list of frames) as an animated WebP or AVIF."""
    out = BytesIO()
    frames[0].save(
        out,
        container,
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=loop,  # a GIF without a loop extension plays once
        background=(0, 0, 0, 0),  # what browsers show around frames, as for GIF
        **encoding.animation_params(container, quality),
        **({"icc_profile": icc} if icc else {}),
    )
    return out.getvalue()


def _frame_count(im: ImageFile.ImageFile, max_frames: int) -> int:
    """The number of frames, refusing more than `max_frames` without counting them all: a GIF does not
    say how many frames it has, and counting a million 1x1 frames (Pillow's n_frames) takes ~10 s."""
    if im.format == "GIF":
        try:
            im.seek(max_frames)  # frame numbers start at 0: this one exists only past the cap
        except EOFError:
            im.seek(0)
        else:
            raise ImageRejected(f"animation has more than {max_frames:,} frames", "bomb")
    frames: int = getattr(im, "n_frames", 1)
    if frames > max_frames:
        raise ImageRejected(f"animation has {frames:,} frames; the limit is {max_frames:,}", "bomb")
    return frames


def _webp_alpha_flagged(data: bytes) -> bytes:
    """An animated WebP with the "has alpha" flag set in its VP8X header (unchanged if not animated WebP).

    libwebp crops each frame to the pixels that change, so an opaque square moving over a transparent
    canvas is stored as opaque frames and the flag stays unset; Pillow then decodes the canvas as opaque
    black. With the flag the canvas decodes transparent, as it is meant; for truly opaque animations the
    flag only costs an alpha channel of 255s.
    """
    if data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8X" or len(data) < 30:
        return data
    flags = data[20]
    if not flags & 0x02 or flags & 0x10:  # not animated, or already says alpha
        return data
    return data[:20] + bytes((flags | 0x10,)) + data[21:]


# --- keeping the original, without its metadata ----------------------------------------------------------


def _clean_original(data: bytes, fmt: str | None, info: dict[Any, Any], upright: bool) -> bytes | None:
    """The original image without private metadata, losslessly; None if we cannot offer that."""
    if not upright or fmt not in CONTENT_TYPES:
        return None  # removing EXIF would drop the rotation it asks for; TIFF is no web format
    if fmt in ("JPEG", "MPO"):
        return strip_jpeg(data)
    if fmt == "PNG":
        return strip_png(data)
    if fmt == "GIF":
        return None if _gif_has_metadata(data) else data
    return None if _METADATA_KEYS & info.keys() else data


_GIF_HARMLESS_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")  # loop count only


def _gif_has_metadata(data: bytes) -> bool:
    """Whether a GIF may hold comment, plain-text or application (XMP, ...) extensions.

    Pillow reports only the first frame's, so we look at the bytes: a false positive (the pattern inside
    compressed pixels) only makes us re-encode instead of keeping the original, which is the safe side.
    """
    if b"\x21\xfe" in data or b"\x21\x01\x0c" in data:  # comment; plain text (block size 12)
        return True
    start = 0
    while (start := data.find(b"\x21\xff\x0b", start) + 1) > 0:
        if data[start + 2 : start + 13] not in _GIF_HARMLESS_APPS:
            return True
    return False


# JPEG APPn segments worth keeping, by marker and payload prefix. Everything else in APPn/COM is metadata:
# EXIF and XMP (APP1), MPF (APP2, it points at appended images we drop), IPTC/Photoshop (APP13), comments.
# JFXX (APP0 thumbnails) goes too, and so does a thumbnail inside the JFIF segment itself: a thumbnail can
# show what an edit cropped away.
_JPEG_KEEP_APP = {0xE0: (b"JFIF\0",), 0xE2: (b"ICC_PROFILE\0",), 0xEE: (b"Adobe",)}


def strip_jpeg(data: bytes) -> bytes | None:
    """`data` (a JPEG) without metadata segments and without anything after the first image's end (MPO
    secondary images, gain maps, motion-photo videos). The image data is copied unchanged. None when the
    structure is not what we understand, e.g. no end-of-image marker."""
    if not data.startswith(b"\xff\xd8"):
        return None
    out = [b"\xff\xd8"]
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            return None
        while pos < end and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        if pos + 1 > end:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # end of image
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no segment payload; not expected here
            return None
        if pos + 2 > end:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > end:
            return None
        payload = data[pos + 2 : pos + length]
        keep = marker not in range(0xE0, 0xF0) and marker != 0xFE
        if marker in _JPEG_KEEP_APP:
            keep = payload.startswith(_JPEG_KEEP_APP[marker])
        if keep and marker == 0xE0:
            # JFIF may carry a thumbnail after its 14 fixed bytes (which end with its width and height):
            # keep the header, say "no thumbnail", drop the pixels.
            if len(payload) >= 14:
                out += (b"\xff\xe0", (16).to_bytes(2, "big"), payload[:12], b"\x00\x00")
        elif keep:
            out += (bytes((0xFF, marker)), data[pos : pos + length])
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            scan_end = _jpeg_scan_end(data, pos)
            if scan_end < 0:
                return None
            out.append(data[pos:scan_end])
            pos = scan_end
    return None


def _jpeg_scan_end(data: bytes, pos: int) -> int:
    """Index of the marker that ends the entropy-coded data starting at `pos`, or -1. Inside it, 0xFF is
    followed by 0x00 (a stuffed byte), a restart marker (0xD0-0xD7) or another 0xFF (fill)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos


# PNG chunks that describe pixels or colour (and APNG frames); text, EXIF, time and private chunks go.
_PNG_KEEP = frozenset(
    {
        b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB",
        b"cICP", b"mDCV", b"cLLI", b"bKGD", b"pHYs", b"acTL", b"fcTL", b"fdAT",
    }
)  # fmt: skip


def strip_png(data: bytes) -> bytes | None:
    """`data` (a PNG) with only the chunks in `_PNG_KEEP`, up to IEND; None if its chunks are broken."""
    signature = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(signature):
        return None
    out = [signature]
    pos, end = len(signature), len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunk_end = pos + 12 + length
        if chunk_end > end:
            return None
        if kind in _PNG_KEEP:
            out.append(data[pos:chunk_end])
        if kind == b"IEND":
            return b"".join(out)
        pos = chunk_end
    return None
