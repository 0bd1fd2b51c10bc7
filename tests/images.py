"""Test images made in memory with Pillow, deterministic for a given seed.

Shared by unit, integration, e2e tests and benchmarks. Every function returns encoded bytes (or, for `photo`,
a Pillow image); sizes default to small so tests stay fast.
"""

from __future__ import annotations

import random
import struct
import zlib
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageFilter, PngImagePlugin

# EXIF tag numbers used below (see PIL.ExifTags).
ORIENTATION = 0x0112
MAKE = 0x010F
MODEL = 0x0110
BODY_SERIAL = 0xA431
EXIF_IFD = 0x8769
GPS_IFD = 0x8825

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="Jane Secret"/>'
    b"</rdf:RDF></x:xmpmeta>"
)
SECRET = b"Jane Secret"  # appears in the XMP and the comment; must never survive compression
SERIAL = "SN-0042-SECRET"


def _save(im: Image.Image, fmt: str, **params: Any) -> bytes:
    out = BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


# --- photo-like content -----------------------------------------------------------------------------------


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """An RGB image that compresses like a photo: gradients, soft shapes, surface texture and sensor grain.

    At 1920x1080 it is about 0.5 MB as a q90 JPEG, like a real photo of that size.
    """
    rnd = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    im = Image.merge("RGB", (gradient, radial, gradient.transpose(Image.Transpose.ROTATE_180)))
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        x, y = rnd.randrange(width), rnd.randrange(height)
        r = rnd.randrange(1, max(2, min(width, height) // 4))
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(max(1.0, min(width, height) / 200)))
    sw, sh = max(1, width // 4), max(1, height // 4)
    texture = Image.frombytes("RGB", (sw, sh), rnd.randbytes(sw * sh * 3))
    im = Image.blend(im, texture.resize((width, height), Image.Resampling.BICUBIC), 0.2)
    grain = Image.frombytes("RGB", (width, height), rnd.randbytes(width * height * 3))
    return Image.blend(im, grain, 0.05)


def jpeg_photo(width: int = 64, height: int = 48, seed: int = 0, quality: int = 90, **params: Any) -> bytes:
    """A photo-like baseline JPEG, no metadata unless `params` (Pillow save options) add some."""
    return _save(photo(width, height, seed), "JPEG", quality=quality, **params)


def png_photo(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """An opaque RGB PNG of photo-like content (PNG is lossless, so it is large)."""
    return _save(photo(width, height, seed), "PNG")


# --- a varied photo corpus: what quality=auto is calibrated and tested on ---------------------------------


def _studio(rng: np.random.Generator, width: int, height: int, blur: float) -> np.ndarray:
    """A graded backdrop with a few soft-lit objects: the scene under the kinds below, as float RGB."""
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    backdrop = (140 + 90 * ramp * tint) * np.ones((1, width, 1), np.float32)
    im = Image.fromarray(backdrop.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.2, 0.85) * height
        r = rng.uniform(0.08, 0.25) * min(width, height)
        fill = tuple(int(v) for v in rng.integers(20, 235, 3))
        draw.ellipse((cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r), fill=fill)
    return np.asarray(im.filter(ImageFilter.GaussianBlur(blur)), np.float32)


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Zero-mean, unit-variance detail at several scales (foliage, fabric, gravel)."""
    total = np.zeros((height, width), np.float32)
    for scale in (2, 3, 5, 9, 17):
        cells = rng.random((max(2, height // scale), max(2, width // scale)), dtype=np.float32)
        layer = Image.fromarray((cells * 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        total += np.asarray(layer, np.float32) * scale**0.5
    return (total - total.mean()) / (total.std() + 1e-6)


def _rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def smooth_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Studio shot: soft gradients and shapes, almost no grain. Fixed quality wastes bytes on these."""
    rng = np.random.default_rng(seed)
    scene = _studio(rng, width, height, max(2.0, min(width, height) / 60))
    return _rgb(scene + rng.normal(0, rng.uniform(0.6, 1.5), scene.shape))


def noisy_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Low light: the scene under heavy luminance and some colour grain. Fixed quality makes these ugly."""
    rng = np.random.default_rng(seed)
    scene = _studio(rng, width, height, 1.5)
    grain = rng.normal(0, rng.uniform(6, 16), (height, width, 1)) + rng.normal(0, 4, scene.shape)
    return _rgb(scene + grain)


def detailed_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """High detail: multi-scale texture, a fine weave and thin sharp strokes over the scene."""
    rng = np.random.default_rng(seed)
    scene = _studio(rng, width, height, 0.8)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    weave = np.sin(x * rng.uniform(0.6, 1.2)) * np.sin(y * rng.uniform(0.6, 1.2))
    scene += 22 * _texture(rng, width, height)[..., None] + 14 * weave[..., None] * rng.uniform(0.5, 1, 3)
    im = _rgb(scene)
    draw = ImageDraw.Draw(im)
    for _ in range(width * height // 4000):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        end = (x0 + rng.uniform(-20, 20), y0 + rng.uniform(-20, 20))
        draw.line((x0, y0, *end), fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=1)
    return _rgb(np.asarray(im, np.float32) + rng.normal(0, 3, scene.shape))


def product_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """E-commerce packshot: a shaded object with crisp edges and a printed label, on white, soft shadow."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height), (255, 255, 255))
    w, h = rng.uniform(0.3, 0.5) * width, rng.uniform(0.45, 0.7) * height
    left, top = (width - w) / 2, (height - h) / 2
    shadow = Image.new("L", (width, height), 0)
    ImageDraw.Draw(shadow).ellipse((left, top + 0.9 * h, left + w, top + 1.1 * h), fill=90)
    im.paste((150, 150, 150), mask=shadow.filter(ImageFilter.GaussianBlur(min(width, height) / 40)))
    body = tuple(int(v) for v in rng.integers(30, 200, 3))
    shading = Image.linear_gradient("L").rotate(90).resize((int(w), int(h)))
    block = Image.composite(
        Image.new("RGB", shading.size, body),
        Image.new("RGB", shading.size, (250, 250, 250)),
        shading.point(lambda v: 255 - v // 3),
    )
    mask = Image.new("L", block.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, *block.size), radius=int(min(w, h) / 8), fill=255)
    im.paste(block, (int(left), int(top)), mask)
    draw = ImageDraw.Draw(im)
    for line in range(6):  # label text: thin high-contrast strokes
        y0 = top + h * (0.35 + 0.05 * line)
        for _ in range(int(rng.integers(4, 9))):
            x0 = left + w * rng.uniform(0.2, 0.75)
            draw.rectangle((x0, y0, x0 + rng.uniform(3, w / 10), y0 + max(1, h / 120)), fill=(15, 15, 15))
    return _rgb(np.asarray(im, np.float32) + rng.normal(0, 0.8, (height, width, 3)))


PHOTO_KINDS = {
    "smooth": smooth_photo,
    "noisy": noisy_photo,
    "detailed": detailed_photo,
    "product": product_photo,
    "mixed": photo,
}


def varied_photo(kind: str, width: int, height: int, seed: int = 0, quality: int = 92) -> bytes:
    """A JPEG (as a camera or a catalogue tool writes it) of the given kind; see PHOTO_KINDS."""
    return _save(PHOTO_KINDS[kind](width, height, seed), "JPEG", quality=quality)


# --- alpha ------------------------------------------------------------------------------------------------


def alpha_mask(width: int, height: int) -> Image.Image:
    """Left half fully transparent, right half opaque, with a soft middle band."""
    mask = Image.linear_gradient("L").rotate(90).resize((width, height))
    return mask.point(lambda v: 0 if v < 96 else 255 if v > 160 else v)


def png_with_alpha(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """RGBA PNG whose left part is fully transparent (the colour under it is pure black, on purpose)."""
    im = photo(width, height, seed)
    mask = alpha_mask(width, height)
    im.paste((0, 0, 0), mask=mask.point(lambda v: 255 - v))  # black under the transparent part
    im.putalpha(mask)
    return _save(im, "PNG")


def png_rgba_opaque(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """RGBA PNG whose alpha is 255 everywhere: a common export from design tools."""
    im = photo(width, height, seed)
    im.putalpha(255)
    return _save(im, "PNG")


def png_gray_alpha(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """LA (grayscale + alpha) PNG."""
    im = photo(width, height, seed).convert("L")
    im = Image.merge("LA", (im, alpha_mask(width, height)))
    return _save(im, "PNG")


def png_palette(width: int = 64, height: int = 48, transparent: bool = False, seed: int = 0) -> bytes:
    """Palette (P) PNG; with `transparent`, palette index 0 is transparent and fills the left half."""
    im = photo(width, height, seed).quantize(63)
    if transparent:  # a 64th palette entry, used only by the transparent half
        im.putpalette([*(im.getpalette() or [])[: 63 * 3], 0, 0, 0])
        ImageDraw.Draw(im).rectangle((0, 0, width // 2 - 1, height - 1), fill=63)
        return _save(im, "PNG", transparency=63)
    return _save(im, "PNG")


def png_grayscale(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """8-bit grayscale (L) PNG."""
    return _save(photo(width, height, seed).convert("L"), "PNG")


def png_16bit(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """16-bit grayscale PNG (opens as "I;16"): `photo` in gray, each 8-bit value v stored as v * 257."""
    gray = photo(width, height, seed).convert("L")
    return _save(gray.convert("I").point(lambda v: v * 257).convert("I;16"), "PNG")


def gray_1bit_png(width: int = 64, height: int = 48) -> bytes:
    """Bilevel (mode "1") PNG: a checkerboard."""
    im = Image.new("1", (width, height))
    ImageDraw.Draw(im).rectangle((0, 0, width // 2, height // 2), fill=1)
    return _save(im, "PNG")


# --- metadata ---------------------------------------------------------------------------------------------


def private_exif(orientation: int = 1) -> Image.Exif:
    """EXIF with an orientation, camera make/model/serial and a GPS position."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "ACME"
    exif[MODEL] = "Snapper 3000"
    exif.get_ifd(EXIF_IFD)[BODY_SERIAL] = SERIAL
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2] = "N", (51.0, 30.0, 0.0)
    gps[3], gps[4] = "W", (0.0, 7.0, 0.0)
    return exif


def jpeg_with_metadata(
    width: int = 64, height: int = 48, orientation: int = 1, seed: int = 0, quality: int = 90
) -> bytes:
    """JPEG carrying EXIF (orientation, GPS, serial), XMP and a comment."""
    return _save(
        photo(width, height, seed),
        "JPEG",
        quality=quality,
        exif=private_exif(orientation),
        xmp=XMP,
        comment=b"shot by " + SECRET,
    )


def marked_for_orientation(width: int = 60, height: int = 40) -> Image.Image:
    """An upright RGB image with a red top-left quadrant and the rest blue: shows any rotation or flip."""
    im = Image.new("RGB", (width, height), (0, 0, 255))
    ImageDraw.Draw(im).rectangle((0, 0, width // 2 - 1, height // 2 - 1), fill=(255, 0, 0))
    return im


def jpeg_rotated(orientation: int, width: int = 60, height: int = 40) -> bytes:
    """A JPEG whose stored pixels are `marked_for_orientation` transformed so that applying the EXIF
    `orientation` shows it upright again (what a camera held sideways writes)."""
    upright = marked_for_orientation(width, height)
    # The inverse of the transform a viewer applies for each orientation value.
    stored = {
        1: upright,
        3: upright.transpose(Image.Transpose.ROTATE_180),
        6: upright.transpose(Image.Transpose.ROTATE_90),
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    return _save(stored, "JPEG", quality=95, exif=private_exif(orientation))


def srgb_icc() -> bytes:
    """An sRGB ICC profile made by LittleCMS."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def jpeg_with_icc(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return jpeg_photo(width, height, seed, icc_profile=srgb_icc())


# --- CMYK -------------------------------------------------------------------------------------------------

# What the inks look like in sRGB in our toy press profile: roughly SWOP, far from the naive
# "cyan = (0, 255, 255)" a profile-less conversion gives.
_INKS_RGB = {"c": (0, 158, 224), "m": (226, 0, 122), "y": (255, 237, 0), "k": (35, 31, 32)}


def cmyk_icc() -> bytes:
    """A minimal ICC v2 CMYK output profile (lut8 A2B0, 2 grid points per ink, Lab PCS).

    Each of the 16 grid corners is the product of the inks present (a multiplicative ink model) so
    that, e.g., 100% cyan converts to about `_INKS_RGB["c"]` through the profile.
    """
    corners = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = [1.0, 1.0, 1.0]
                    for on, ink in ((c, "c"), (m, "m"), (y, "y"), (k, "k")):
                        if on:
                            rgb = [v * i / 255 for v, i in zip(rgb, _INKS_RGB[ink], strict=True)]
                    corners.append(tuple(round(v * 255) for v in rgb))
    rgb_im = Image.new("RGB", (16, 1))
    rgb_im.putdata(corners)
    lab = ImageCms.profileToProfile(
        rgb_im, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), outputMode="LAB"
    )
    assert lab is not None
    # Pillow's 8-bit LAB stores a* and b* as signed bytes; lut8 wants them offset by 128.
    clut = bytes(v if i % 3 == 0 else v ^ 0x80 for i, v in enumerate(lab.tobytes()))
    identity = bytes(range(256))
    s15 = struct.Struct(">i")
    matrix = b"".join(s15.pack(65536 if i % 4 == 0 else 0) for i in range(9))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + clut + identity * 3

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"".join(s15.pack(round(v * 65536)) for v in (x, y, z))

    desc_text = b"toy CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(desc_text)) + desc_text + bytes(4 + 4 + 2 + 1 + 67)
    wtpt = b"XYZ " + bytes(4) + xyz(0.9642, 1.0, 0.8249)
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, content in tags:
        pad = b"\0" * (-len(content) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(content))
        body += content + pad
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"prtrCMYKLab "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8)
        + struct.pack(">I", 0)  # perceptual intent
        + xyz(0.9642, 1.0, 0.8249)
        + bytes(4 + 16 + 28)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def jpeg_cmyk(
    width: int = 32,
    height: int = 32,
    cmyk: tuple[int, int, int, int] = (255, 0, 0, 0),
    icc: bytes | None = None,
) -> bytes:
    """A flat-colour CMYK JPEG (Adobe-style, as Photoshop writes), optionally with an embedded profile."""
    im = Image.new("CMYK", (width, height), cmyk)
    return _save(im, "JPEG", quality=95, **({"icc_profile": icc} if icc else {}))


# --- other formats ----------------------------------------------------------------------------------------


def webp_image(
    width: int = 64, height: int = 48, alpha: bool = False, seed: int = 0, quality: int = 90
) -> bytes:
    im: Image.Image = (
        Image.open(BytesIO(png_with_alpha(width, height, seed))) if alpha else photo(width, height, seed)
    )
    return _save(im, "WEBP", quality=quality)


def one_pixel(fmt: str = "PNG", mode: str = "RGB") -> bytes:
    colour: Any = {"RGB": (200, 100, 50), "RGBA": (200, 100, 50, 128), "L": 77, "P": 3}[mode]
    return _save(Image.new(mode, (1, 1), colour), fmt)


def square_box(index: int, count: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Where frame `index` of `count` draws its red square: moving right across the top half."""
    x = index * width // max(1, count)
    return (x, 0, x + width // 4, height // 2)


def _frames(width: int, height: int, count: int, transparent: bool) -> list[Image.Image]:
    """RGBA frames of a red square moving right over a white (or fully transparent) background."""
    frames = []
    for i in range(count):
        im = Image.new("RGBA", (width, height), (0, 0, 0, 0) if transparent else (255, 255, 255, 255))
        ImageDraw.Draw(im).rectangle(square_box(i, count, width, height), fill=(255, 0, 0, 255))
        frames.append(im)
    return frames


def animated_gif(
    width: int = 32,
    height: int = 32,
    frames: int = 4,
    durations: list[int] | None = None,
    transparent: bool = False,
    loop: int | None = 0,
    comment: bytes | None = None,
) -> bytes:
    """Animated GIF like `_frames`; `loop=None` writes no loop extension (plays once); `comment` adds one."""
    ims = []
    for i in range(frames):
        # Palette 0 = background (white, or transparent), 1 = red: exact colours, no quantiser surprises.
        im = Image.new("P", (width, height), 0)
        im.putpalette([255, 255, 255, 255, 0, 0])
        ImageDraw.Draw(im).rectangle(square_box(i, frames, width, height), fill=1)
        ims.append(im)
    params: dict[str, Any] = {"duration": durations or [100] * frames, "disposal": 2, "optimize": False}
    if transparent:
        params["transparency"] = 0
    if loop is not None:
        params["loop"] = loop
    if comment is not None:
        params["comment"] = comment
    return _save(ims[0], "GIF", save_all=True, append_images=ims[1:], **params)


def animated_webp(width: int = 32, height: int = 32, frames: int = 4, transparent: bool = True) -> bytes:
    """Animated WebP of `_frames`, each frame 80 ms, looping forever."""
    ims = _frames(width, height, frames, transparent)
    return _save(ims[0], "WEBP", save_all=True, append_images=ims[1:], duration=80, loop=0, quality=90)


def mpo(width: int = 64, height: int = 48) -> bytes:
    """A two-image MPO (what phones write for depth maps or stereo): a JPEG with a second one appended."""
    first, second = photo(width, height, 1), photo(width, height, 2)
    return _save(first, "MPO", save_all=True, append_images=[second], quality=90)


# --- broken and hostile input -----------------------------------------------------------------------------


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` fraction of `data`: what a dropped connection leaves."""
    return data[: int(len(data) * keep)]


def corrupt(data: bytes, start: float = 0.3) -> bytes:
    """`data` with a run of bytes in its body overwritten (headers intact)."""
    at = int(len(data) * start)
    return data[:at] + bytes(range(256))[: len(data) - at] + data[at + 256 :]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose IHDR claims `width` x `height` (10 G pixels by default); decoding would explode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_with_text(
    width: int = 64, height: int = 48, orientation: int | None = None, alpha: bool = False, seed: int = 0
) -> bytes:
    """A photo PNG (RGBA with `alpha`) with tEXt/iTXt chunks (author, XMP) and, given `orientation`, an
    eXIf chunk with GPS."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", SECRET.decode())
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    params: dict[str, Any] = {"pnginfo": info}
    if orientation is not None:
        params["exif"] = private_exif(orientation)
    im = photo(width, height, seed)
    if alpha:
        im.putalpha(alpha_mask(width, height))
    return _save(im, "PNG", **params)


def animated_png(width: int = 32, height: int = 32, frames: int = 4, transparent: bool = True) -> bytes:
    """APNG of `_frames`, 80 ms a frame."""
    ims = _frames(width, height, frames, transparent)
    return _save(ims[0], "PNG", save_all=True, append_images=ims[1:], duration=80, loop=0)
