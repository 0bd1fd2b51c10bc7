"""The output CSV: the input's columns, unchanged, plus `Output Image Urls`, safe to open in a spreadsheet.

* Formula injection: a cell starting with = + - @ TAB or CR is prefixed with a single quote, as the OWASP
  "CSV Injection" guidance says, so a spreadsheet shows it as text instead of evaluating it. The price is
  that a harmless value such as "-5% sale" or "+1" also gets the quote; we accept that. URLs and
  "FAILED: …" (and a cancelled request's "SKIPPED: …") entries start with a letter, so they are never touched.
* Encoding: UTF-8 with a BOM, because Excel needs the BOM to read UTF-8 (non-Latin product names) and CSV
  readers that know UTF-8 (ours included) skip it. Lines end in CRLF (RFC 4180), cells are quoted only
  when needed.
* `Output Image Urls` holds one entry per input URL, in the same order, joined with ", ". Entries are
  formatted by the caller (an output URL, or `failed_entry(reason)`), and must not contain a comma.
* A request made with image options gets one more column, `Image Options`, saying them on every row
  (`max_width=800; format=webp`): rows stay one per product and entries one per URL, and a row copied,
  sorted or filtered in a spreadsheet still says how its images were made. Without options the CSV is
  exactly as it always was.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Final

from shared.image_options import ImageOptions
from shared.links import Links
from shared.repository import OutcomeDoc, OutcomeStatus, RequestDoc, RequestRepository

OUTPUT_COLUMN: Final = "Output Image Urls"
OPTIONS_COLUMN: Final = "Image Options"
SEPARATOR: Final = ", "
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_FLUSH_AT: Final = 64 * 1024  # characters buffered before a piece is handed to the response


def neutralise(cell: str) -> str:
    """`cell`, made inert for spreadsheets (see the module docstring)."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def failed_entry(reason: str, label: str = "FAILED") -> str:
    """The `Output Image Urls` entry for an image that could not be compressed (or, `label` SKIPPED, was
    skipped by a cancel). Commas and line breaks in the reason are replaced, so the cell still splits
    into exactly one entry per input URL."""
    clean = " ".join(reason.replace(",", ";").split())
    return f"{label}: {clean}" if clean else label


def output_header(columns: Sequence[str], options: str = "") -> list[str]:
    return [*(neutralise(c) for c in columns), OUTPUT_COLUMN, *([OPTIONS_COLUMN] if options else [])]


def output_row(cells: Sequence[str], outputs: Sequence[str], options: str = "") -> list[str]:
    """One output row: the input `cells`, then `outputs` (aligned 1:1 with the input URLs) in one cell,
    then the request's image `options` if it had any."""
    row = [*(neutralise(c) for c in cells), neutralise(SEPARATOR.join(outputs))]
    return [*row, neutralise(options)] if options else row


class _Encoder:
    """csv.writer into a string buffer, drained as UTF-8 bytes (with the BOM first) in large pieces."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)  # excel dialect: CRLF, minimal quoting
        self._bom_sent = False

    def write(self, row: Sequence[str]) -> None:
        self._writer.writerow(row)

    def full(self) -> bool:
        return self._buffer.tell() >= _FLUSH_AT

    def drain(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        data = text.encode("utf-8")
        if not self._bom_sent:
            self._bom_sent = True
            data = codecs.BOM_UTF8 + data
        return data


async def write_csv(rows: AsyncIterable[Sequence[str]]) -> AsyncIterator[bytes]:
    """Encodes `rows` (header first) as the CSV's bytes, in pieces of about 64 KiB, for a streaming
    response: memory stays bounded however many rows there are."""
    encoder = _Encoder()
    async for row in rows:
        encoder.write(row)
        if encoder.full():
            yield encoder.drain()
    yield encoder.drain()  # at least the BOM, so even an empty result is a valid UTF-8 CSV


def output_cell(outcome: OutcomeDoc | None, links: Links) -> str:
    """What the output CSV says for one image: its URL, or why it failed."""
    if outcome is None:
        return "PENDING"
    if outcome["status"] == OutcomeStatus.COMPRESSED:
        return links.image(outcome.get("file_id", ""))
    return failed_entry(outcome.get("reason", "unknown"), outcome["status"])


async def output_csv(repo: RequestRepository, request: RequestDoc, links: Links) -> AsyncIterator[bytes]:
    """A request's output CSV, streamed from the read model in bounded memory."""

    options = ImageOptions.from_stored(request.get("options")).describe()

    async def rows() -> AsyncIterator[list[str]]:
        yield output_header(request["columns"], options)
        async for row, outcomes in repo.rows_with_outcomes(request["_id"]):
            yield output_row(row["cells"], [output_cell(o, links) for o in outcomes], options)

    async for part in write_csv(rows()):
        yield part
