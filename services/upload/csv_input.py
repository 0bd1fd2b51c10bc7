"""Streaming validation of an uploaded product CSV, in bounded memory.

The input has the columns `S. No.`, `Product Name` and `Input Image Urls`; `CsvReader.chunks` yields the
valid rows in chunks as it reads, so the caller can store them while the rest is still being checked, then
`raise_if_invalid` raises `CsvRejected` with every problem found (the caller deletes what it stored).
Memory does not grow with the file, except for the map of serial numbers seen (duplicates are an error).

Decisions, as the user sees them:

* Row numbers are spreadsheet rows: the header is row 1, a blank line counts as a row (a spreadsheet shows
  it), and a quoted cell holding line breaks stays on one row. `Problem.row` is None for file-level problems.
* Text is UTF-8, with or without a BOM. Undecodable bytes do not stop the reading: they are decoded with
  `surrogateescape` and reported per row and column, so the user sees exactly which cells to fix. Status 415.
* Headers match ignoring case and whitespace ("s.no." is `S. No.`); a missing one is named, with the closest
  header found (difflib). Other columns are kept, in order, and passed through to the output CSV. Trailing
  blank header cells (spreadsheet debris) are dropped, as are blank cells past the header's width.
* URLs are separated by commas or line breaks; empty elements ("a,,b", a trailing comma) are ignored. A
  comma directly followed by something other than whitespace, another URL (a scheme, "www.") or a comma
  is part of the URL, because CDN URLs carry commas ("…/w_100,h_100/a.jpg"). URL checks are syntactic
  only (http or https, a host, no whitespace, at most `max_url_length` characters); the compressor does
  the network-level checks.
* Status codes: 400 the CSV syntax is broken or there is no data (empty file, header only, unterminated
  quote); 413 too large: more than `max_bytes`, `max_rows` data rows, `max_images` URLs in total or a row of
  more than `max_row_bytes` (reading stops at once); 415 not UTF-8 CSV text (an image, a workbook, NUL bytes
  anywhere in the file, undecodable bytes); 422 the CSV
  parses but its content is wrong: missing columns, bad cells, a row with the wrong number of cells, more
  than `max_urls_per_row` URLs in one row. With several kinds of problem the status is the first of
  413, 415, 400, 422.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final
from urllib.parse import urlsplit

import structlog

from shared.magic import sniff
from shared.settings import Settings

log = structlog.get_logger()

SERIAL: Final = "S. No."
NAME: Final = "Product Name"
URLS: Final = "Input Image Urls"
REQUIRED: Final = (SERIAL, NAME, URLS)

MAX_PROBLEMS: Final = 100  # listed in full; the rest are counted in one final entry
SNIFF_BYTES: Final = 1024

BAD_REQUEST: Final = 400
TOO_LARGE: Final = 413
UNSUPPORTED: Final = 415
UNPROCESSABLE: Final = 422
# Which status wins when problems of several kinds were found: the most fundamental one.
_RANK: Final = {TOO_LARGE: 4, UNSUPPORTED: 3, BAD_REQUEST: 2, UNPROCESSABLE: 1}
_TITLES: Final = {
    BAD_REQUEST: "The file is not a well-formed CSV with data",
    TOO_LARGE: "The file is too large",
    UNSUPPORTED: "The file is not a UTF-8 CSV text file",
    UNPROCESSABLE: "The CSV has invalid content",
}

_SAVE_AS = "export or save it as 'CSV UTF-8'"

# Line breaks always separate URLs; a comma does when followed by whitespace (", " is the documented
# separator, and a URL cannot hold whitespace), another URL, another comma or the end of the cell.
_SEPARATOR: Final = re.compile(r"[\r\n]+|,(?=\s|[A-Za-z][A-Za-z0-9+.\-]*://|www\.|,|$)")
_BAD_URL_CHAR: Final = re.compile(r"[\x00-\x20\x7f]")
# The common shape (scheme, plain host name, path) in one regex: urlsplit costs ~3 us a URL, this ~0.3 us.
# Anything else (a port, user info, IPv6, non-ASCII host, a problem) takes the full check.
_PLAIN_URL: Final = re.compile(
    r"[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9][A-Za-z0-9.\-]*(?:[/?#][^\x00-\x20\x7f]*)?\Z"
)
_SURROGATE: Final = re.compile(r"[\udc80-\udcff]")  # what surrogateescape makes of an undecodable byte


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the upload. `row` is the spreadsheet row (header = 1), `column` a header name;
    either is None when the problem is not about one row or column."""

    row: int | None
    column: str | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        """The problem as the API reports it (see errors.py), `field` being a form field's name."""
        return {"row": self.row, "column": self.column, "field": None, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ParsedRow:
    serial: str
    name: str
    urls: tuple[str, ...]
    cells: tuple[str, ...]  # every cell, trimmed, in header order (extra columns included)


@dataclass(frozen=True)
class CsvLimits:
    max_bytes: int
    max_rows: int
    max_urls_per_row: int
    max_images: int
    max_url_length: int
    max_row_bytes: int = 1024 * 1024  # one row, all its cells (UTF-8): it must fit a stored document

    @classmethod
    def from_settings(cls, s: Settings) -> CsvLimits:
        return cls(
            max_bytes=s.max_csv_bytes,
            max_rows=s.max_rows,
            max_urls_per_row=s.max_urls_per_row,
            max_images=s.max_images,
            max_url_length=s.max_url_length,
            max_row_bytes=s.max_row_bytes,
        )


class CsvRejected(Exception):
    def __init__(self, status_code: int, problems: list[Problem]) -> None:
        self.status_code = status_code
        self.problems = problems
        first = f": {_describe(problems[0])}" if problems else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{_TITLES.get(status_code, 'The CSV was rejected')}{first}{more}")


class _TooLarge(Exception):
    pass


class _LineTooLong(Exception):
    pass


class _NulByte(Exception):
    pass


class _CountingRaw(io.RawIOBase):
    """Reads the caller's file, refusing to go past `max_bytes`; never closes it (the caller owns it)."""

    def __init__(self, source: BinaryIO, max_bytes: int) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        n = len(data)
        self.total += n
        if self.total > self._max_bytes:
            raise _TooLarge
        buffer[:n] = data
        return n


class CsvReader:
    """Validates a CSV while reading it once, front to back. Iterate `chunks()` to the end, then call
    `raise_if_invalid()`. Rows are yielded only while no problem has been found; after the first problem
    the reader keeps checking (to report everything at once) but yields nothing more."""

    def __init__(self, source: BinaryIO, limits: CsvLimits) -> None:
        self.limits = limits
        self.columns: list[str] = []
        self.row_count = 0  # data rows read (blank lines excluded)
        self.image_count = 0  # URLs in those rows
        self._raw = _CountingRaw(source, limits.max_bytes)
        self._problems: list[Problem] = []
        self._omitted = 0
        self._status: int | None = None
        self._started = False
        self._finished = False
        self._seen: dict[str, int] = {}  # serial -> row: the one structure that grows with the file
        self._serial_at = self._name_at = self._urls_at = 0
        # The longest legitimate cell is a full URL list; bound lines and cells a little above that, so a
        # file with no line breaks or an unterminated quote cannot make one huge string.
        self._cell_limit = limits.max_urls_per_row * (limits.max_url_length + 3) + 64 * 1024
        self._line_limit = max(1024 * 1024, self._cell_limit)
        if csv.field_size_limit() < self._cell_limit:
            csv.field_size_limit(self._cell_limit)  # process-wide, but only ever raised, never lowered

    @property
    def problems(self) -> list[Problem]:
        if not self._omitted:
            return list(self._problems)
        return [*self._problems, Problem(None, None, f"… and {self._omitted} more problems")]

    @property
    def status_code(self) -> int | None:
        """The status the upload will be rejected with, or None while no problem has been found."""
        return self._status

    @property
    def bytes_read(self) -> int:
        return self._raw.total

    @property
    def urls_column(self) -> int:
        """The position of `Input Image Urls` in the header (once it has been read)."""
        return self._urls_at

    def chunks(self, size: int) -> Iterator[list[ParsedRow]]:
        if size < 1:
            raise ValueError("chunk size must be at least 1")
        if self._started:
            raise RuntimeError("a CsvReader can be iterated only once")
        self._started = True
        batch: list[ParsedRow] = []
        for row in self._rows():
            batch.append(row)
            if len(batch) == size:
                yield batch
                batch = []
        if batch and self._status is None:
            yield batch
        self._finished = True

    def raise_if_invalid(self) -> None:
        if not self._finished:
            raise RuntimeError("raise_if_invalid() called before chunks() was read to the end")
        if self._status is None:
            log.info("csv.accepted", rows=self.row_count, images=self.image_count, bytes=self.bytes_read)
            return
        problems = self.problems
        log.info(
            "csv.rejected",
            status=self._status,
            problems=len(self._problems) + self._omitted,
            first=problems[0].reason,
            bytes=self.bytes_read,
        )
        raise CsvRejected(self._status, problems)

    # --- reading ----------------------------------------------------------------------------------------

    def _rows(self) -> Iterator[ParsedRow]:
        row = 0  # the record being parsed; csv.Error concerns the next one
        try:
            buffered = io.BufferedReader(self._raw, buffer_size=64 * 1024)
            what = _binary_kind(buffered.peek(SNIFF_BYTES)[:SNIFF_BYTES])
            if what:
                self._add(None, None, f"not a CSV file: it looks like {what}; {_SAVE_AS}", UNSUPPORTED)
                return
            text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="surrogateescape", newline="")
            # skipinitialspace: `1, "a, b"` is a quoted cell, as people mean it (cells are trimmed anyway).
            records = csv.reader(_lines(text, self._line_limit), strict=True, skipinitialspace=True)
            header = False
            for record in records:
                row += 1
                cells = [c.strip() for c in record]
                if not any(cells):
                    continue
                # A character is at most 4 bytes: only a row that might be too large is measured exactly.
                if 4 * sum(map(len, cells)) > self.limits.max_row_bytes and self._row_too_large(row, cells):
                    return
                if not header:
                    header = True
                    if not self._header(row, cells):
                        return
                    continue
                self.row_count += 1
                if self.row_count > self.limits.max_rows:
                    self._add(row, None, f"more than {self.limits.max_rows} data rows", TOO_LARGE)
                    return
                parsed = self._row(row, cells)
                if self.image_count > self.limits.max_images:
                    self._add(row, URLS, f"more than {self.limits.max_images} images in total", TOO_LARGE)
                    return
                if parsed is not None and self._status is None:
                    yield parsed
        except _TooLarge:
            self._add(None, None, f"the file is larger than {self.limits.max_bytes} bytes", TOO_LARGE)
            return
        except _NulByte:
            why = f"a NUL byte (binary data) on row {row + 1}: not a CSV text file; {_SAVE_AS}"
            self._add(row + 1, None, why, UNSUPPORTED)
            return
        except _LineTooLong:
            self._add(row + 1, None, f"a line is longer than {self._line_limit} characters", BAD_REQUEST)
            return
        except csv.Error as e:
            self._add(row + 1, None, _csv_error(str(e), self._cell_limit), BAD_REQUEST)
            return
        if not header:
            self._add(None, None, "the file is empty", BAD_REQUEST)
        elif self.row_count == 0:
            self._add(None, None, "the file has a header but no data rows", BAD_REQUEST)

    def _row_too_large(self, row: int, cells: list[str]) -> bool:
        size = sum(len(c.encode("utf-8", "surrogateescape")) for c in cells)
        if size <= self.limits.max_row_bytes:
            return False
        limit = self.limits.max_row_bytes
        self._add(row, None, f"the row holds {size} bytes; a row may hold at most {limit}", TOO_LARGE)
        return True

    def _header(self, row: int, cells: list[str]) -> bool:
        while cells and not cells[-1]:
            cells.pop()
        self.columns = cells
        self._check_encoding(row, cells)
        keys = [_key(c) for c in cells]
        found: dict[str, int] = {}
        for name in REQUIRED:
            at = [i for i, k in enumerate(keys) if k == _key(name)]
            if len(at) > 1:
                where = ", ".join(str(i + 1) for i in at)
                self._add(
                    row, name, f"column '{name}' appears {len(at)} times (columns {where})", UNPROCESSABLE
                )
            elif at:
                found[name] = at[0]
        taken = set(found.values())
        spare = {keys[i]: cells[i] for i in range(len(cells)) if i not in taken}
        for name in REQUIRED:
            if name in found or any(p.column == name for p in self._problems):
                continue
            close = difflib.get_close_matches(_key(name), list(spare), n=1, cutoff=0.6)
            if len(cells) == 1 and (separator := next((c for c in ";\t|" if c in cells[0]), None)):
                hint = f"the header is one cell separated by {separator!r}: columns are separated by commas"
            elif close:
                hint = f"found '{_short(spare[close[0]])}'"
            else:
                hint = "the header has " + (", ".join(f"'{_short(c, 40)}'" for c in cells[:10]) or "no names")
            self._add(row, name, f"missing column '{name}' ({hint})", UNPROCESSABLE)
        if len(found) < len(REQUIRED):
            return False
        self._serial_at, self._name_at, self._urls_at = found[SERIAL], found[NAME], found[URLS]
        return True

    def _row(self, row: int, cells: list[str]) -> ParsedRow | None:
        width = len(self.columns)
        if len(cells) > width and not any(cells[width:]):
            del cells[width:]
        if len(cells) != width:
            if len(cells) < width:
                column: str | None = self.columns[len(cells)]
                why = f"the row has {len(cells)} cells but the header has {width}: '{column}' is missing"
            else:
                column = None
                why = (
                    f"the row has {len(cells)} cells but the header has {width} (put a cell holding commas,"
                    f' such as several URLs, in double quotes: "url1, url2")'
                )
            self._add(row, _short(column) if column is not None else None, why, UNPROCESSABLE)
            return None
        if not all(map(str.isascii, cells)):  # str.isascii is O(1): the common all-ASCII row costs nothing
            self._check_encoding(row, cells)
        ok = True
        serial = cells[self._serial_at]
        if not serial:
            ok = self._add(row, SERIAL, "blank serial number", UNPROCESSABLE)
        elif (first := self._seen.get(serial)) is not None:
            ok = self._add(
                row, SERIAL, f"serial number '{_short(serial)}' is already used on row {first}", UNPROCESSABLE
            )
        else:
            self._seen[serial] = row
        name = cells[self._name_at]
        if not name:
            ok = self._add(row, NAME, "blank product name", UNPROCESSABLE)
        urls = split_urls(cells[self._urls_at])
        self.image_count += len(urls)
        if not urls:
            ok = self._add(row, URLS, "no image URLs", UNPROCESSABLE)
        elif len(urls) > self.limits.max_urls_per_row:
            ok = self._add(
                row,
                URLS,
                f"{len(urls)} URLs in one row; at most {self.limits.max_urls_per_row}",
                UNPROCESSABLE,
            )
        else:
            for url in urls:
                bad = url_problem(url, self.limits.max_url_length)
                if bad is not None:
                    ok = self._add(row, URLS, f"invalid URL '{_short(url)}': {bad}", UNPROCESSABLE)
        return ParsedRow(serial, name, tuple(urls), tuple(cells)) if ok else None

    def _check_encoding(self, row: int, cells: list[str]) -> None:
        for i, cell in enumerate(cells):
            bad = _SURROGATE.search(cell)
            if bad:
                byte = ord(bad.group()) - 0xDC00
                column = _short(self.columns[i]) if i < len(self.columns) else None
                self._add(row, column, f"not UTF-8 text (byte 0x{byte:02X}); {_SAVE_AS}", UNSUPPORTED)

    def _add(self, row: int | None, column: str | None, reason: str, status: int) -> bool:
        """Records a problem; returns False so a check can write `ok = self._add(...)`."""
        raises = self._status is None or _RANK[status] > _RANK[self._status]
        if raises:
            self._status = status
        # A problem that changes the status is always listed, so the status never goes unexplained.
        if len(self._problems) < MAX_PROBLEMS or raises:
            self._problems.append(Problem(row, column, reason))
        else:
            self._omitted += 1
        return False


def split_urls(cell: str) -> list[str]:
    """The URLs of an `Input Image Urls` cell, trimmed, empty elements dropped."""
    if "," not in cell and "\n" not in cell and "\r" not in cell:
        return [cell] if cell else []
    return [url for part in _SEPARATOR.split(cell) if (url := part.strip())]


def url_problem(url: str, max_length: int) -> str | None:
    """Why `url` is not an acceptable image URL, or None. Syntax only: no DNS, no address checks."""
    if _PLAIN_URL.match(url) and len(url) <= max_length:
        return None
    if len(url) > max_length:
        return f"longer than {max_length} characters"
    if _BAD_URL_CHAR.search(url):
        return "contains a space or control character (separate URLs with commas; write a space as %20)"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        return "malformed URL"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        if not scheme or "://" not in url:
            return "must start with http:// or https://"
        return f"scheme '{_short(scheme, 20)}' is not allowed; only http and https"
    if not host:
        return "no host name"
    return None


def _lines(text: io.TextIOWrapper, limit: int) -> Iterator[str]:
    readline = text.readline
    while line := readline(limit):
        if len(line) >= limit and line[-1] not in "\r\n":
            raise _LineTooLong
        if "\x00" in line:  # the first KiB was sniffed as a whole; this catches binary data further on
            raise _NulByte
        yield line


def _binary_kind(head: bytes) -> str | None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text"
    if (kind := sniff(head)) is not None:
        return kind.label
    if b"\x00" in head:
        return "binary data (it contains NUL bytes)"
    return None


def _csv_error(message: str, cell_limit: int) -> str:
    if "unexpected end of data" in message:
        return 'a quoted cell starting on this row is never closed (a missing closing ")'
    if "expected after" in message:
        return (
            "a closing quote must be followed by a comma or the end of the line "
            '(write a quote inside a quoted cell as "")'
        )
    if "field larger than field limit" in message:
        return f'a cell longer than {cell_limit} characters (is a closing " missing?)'
    return f"malformed CSV: {message}"


def _key(header: str) -> str:
    return "".join(header.split()).casefold()


def _short(value: str, width: int = 80) -> str:
    """`value` made safe to echo back: truncated, undecodable bytes shown as U+FFFD (JSON can't hold them)."""
    if len(value) > width:
        value = value[: width - 1] + "…"
    return _SURROGATE.sub("\ufffd", value)


def _describe(p: Problem) -> str:
    where = [f"row {p.row}"] if p.row is not None else []
    if p.column is not None:
        where.append(f"column '{p.column}'")
    return f"{', '.join(where)}: {p.reason}" if where else p.reason
