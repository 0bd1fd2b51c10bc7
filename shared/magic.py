"""What a file is, judged from its first bytes: the one table of file signatures.

The fetcher uses it to refuse a body that is not an image before downloading all of it, the codec to name
what it could not decode, and the CSV reader to tell someone that they uploaded a workbook or a photo
instead of a CSV. Declared types (Content-Type, file names) are never trusted; these bytes are.
"""

from __future__ import annotations

from dataclasses import dataclass

SNIFF_BYTES = 16  # enough for every signature below


@dataclass(frozen=True)
class FileKind:
    name: str  # short and lowercase: "jpeg", "pdf", ...
    label: str  # for people: "a PNG image", "an Excel 97-2003 workbook (.xls)"
    image: bool = False  # a raster image format someone may hand us as a product photo


JPEG = FileKind("jpeg", "a JPEG image", image=True)
PNG = FileKind("png", "a PNG image", image=True)
GIF = FileKind("gif", "a GIF image", image=True)
WEBP = FileKind("webp", "a WebP image", image=True)
BMP = FileKind("bmp", "a BMP image", image=True)
TIFF = FileKind("tiff", "a TIFF image", image=True)
AVIF = FileKind("avif", "an AVIF image", image=True)
HEIF = FileKind("heif", "a HEIF image", image=True)
PSD = FileKind("psd", "a Photoshop document")
EPS = FileKind("eps", "a PostScript document")
PDF = FileKind("pdf", "a PDF document")
ZIP = FileKind("zip", "a ZIP archive or an Excel workbook (.xlsx)")
XLS = FileKind("xls", "an Excel 97-2003 workbook (.xls)")
GZIP = FileKind("gzip", "a gzip archive")

# (offset, magic) parts, all of which must match. The signatures do not overlap, so order is irrelevant.
_SIGNATURES: tuple[tuple[tuple[tuple[int, bytes], ...], FileKind], ...] = (
    (((0, b"\xff\xd8\xff"),), JPEG),
    (((0, b"\x89PNG\r\n\x1a\n"),), PNG),
    (((0, b"GIF87a"),), GIF),
    (((0, b"GIF89a"),), GIF),
    (((0, b"RIFF"), (8, b"WEBP")), WEBP),
    (((0, b"BM"),), BMP),
    (((0, b"II*\x00"),), TIFF),
    (((0, b"MM\x00*"),), TIFF),
    (((0, b"8BPS"),), PSD),
    (((0, b"%!PS"),), EPS),
    (((0, b"%PDF"),), PDF),
    (((0, b"PK\x03\x04"),), ZIP),
    (((0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),), XLS),
    (((0, b"\x1f\x8b"),), GZIP),
)
# ISO-BMFF brands (bytes 8..12, after "ftyp" at 4..8) of still-image formats; other brands are video.
_BMFF_BRANDS = {
    **dict.fromkeys((b"avif", b"avis"), AVIF),
    **dict.fromkeys((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"), HEIF),
}


def sniff(head: bytes | bytearray) -> FileKind | None:
    """The kind of file the first bytes announce, or None for anything not in the table."""
    for parts, kind in _SIGNATURES:
        if all(head[offset : offset + len(magic)] == magic for offset, magic in parts):
            return kind
    if head[4:8] == b"ftyp":
        return _BMFF_BRANDS.get(bytes(head[8:12]))
    return None


def sniff_image(head: bytes | bytearray) -> str | None:
    """The image format the first bytes announce ("jpeg", "png", ...), or None if they are no image."""
    kind = sniff(head)
    return kind.name if kind is not None and kind.image else None


def describe_non_image(head: bytes | bytearray) -> str:
    """A guess at what a body that is not an image is, for an error message."""
    if not head:
        return "empty body"
    text = bytes(head[:512]).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<meta", b"<title")):
        return "looks like HTML"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "looks like SVG, which is not supported"
    if text.startswith(b"<?xml"):
        return "looks like XML"
    if text.startswith((b"{", b"[")):
        return "looks like JSON"
    if (kind := sniff(head)) in (PDF, ZIP, GZIP):
        return {PDF: "looks like PDF", ZIP: "looks like a ZIP archive", GZIP: "looks like gzip data"}[kind]
    if any(b < 9 or 13 < b < 32 for b in head[:512]):  # control bytes: not text in any common encoding
        return "unknown binary format"
    return "looks like text"
