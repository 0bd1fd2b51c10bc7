"""The output CSV of shared.output_csv: formula neutralising, layout, encoding, and a round trip."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence

import pytest

from services.upload.csv_input import CsvLimits, CsvReader
from shared.output_csv import (
    OPTIONS_COLUMN,
    OUTPUT_COLUMN,
    failed_entry,
    neutralise,
    output_header,
    output_row,
    write_csv,
)

BOM = b"\xef\xbb\xbf"
LIMITS = CsvLimits(
    max_bytes=10**6, max_rows=1000, max_urls_per_row=10, max_images=10_000, max_url_length=2048
)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('=HYPERLINK("http://evil")', '\'=HYPERLINK("http://evil")'),
        ("+1", "'+1"),
        ("-5% sale", "'-5% sale"),  # the accepted false positive
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("https://a.example/1.jpg", "https://a.example/1.jpg"),
        ("FAILED: timeout", "FAILED: timeout"),
        ("a=b", "a=b"),
        ("'quoted", "'quoted"),
        ("", ""),
    ],
)
def test_neutralise(cell: str, expected: str) -> None:
    assert neutralise(cell) == expected


def test_header_appends_the_output_column() -> None:
    assert output_header(["S. No.", "=Brand", "Product Name", "Input Image Urls"]) == [
        "S. No.",
        "'=Brand",
        "Product Name",
        "Input Image Urls",
        OUTPUT_COLUMN,
    ]


def test_row_keeps_cells_and_joins_outputs_in_input_order() -> None:
    row = output_row(
        ["1", "-5% sale", "https://a.example/1.jpg, https://a.example/2.jpg"],
        ["https://out.example/f/1", failed_entry("HTTP 404")],
    )
    assert row == [
        "1",
        "'-5% sale",
        "https://a.example/1.jpg, https://a.example/2.jpg",
        "https://out.example/f/1, FAILED: HTTP 404",
    ]


def test_a_request_with_image_options_says_them_in_one_more_column_on_every_row() -> None:
    options = "max_width=800; format=webp"
    assert output_header(["S. No.", "Input Image Urls"], options) == [
        "S. No.", "Input Image Urls", OUTPUT_COLUMN, OPTIONS_COLUMN,
    ]  # fmt: skip
    row = output_row(["1", "https://a.example/1.jpg"], ["https://out.example/f/1"], options)
    assert row == ["1", "https://a.example/1.jpg", "https://out.example/f/1", options]
    assert output_row(["1"], ["u"]) == ["1", "u"]  # without options: exactly as before


def test_failed_entry_cannot_break_the_one_entry_per_url_alignment() -> None:
    entry = failed_entry("connection refused, retried 3 times\nthen gave up")
    assert entry == "FAILED: connection refused; retried 3 times then gave up"
    cell = output_row(["1"], ["https://out.example/f/1", entry, "https://out.example/f/3"])[-1]
    assert len(cell.split(", ")) == 3
    assert failed_entry("  ") == "FAILED"


async def _aiter(rows: Sequence[Sequence[str]]) -> AsyncIterator[Sequence[str]]:
    for row in rows:
        yield row


async def _collect(rows: Sequence[Sequence[str]]) -> list[bytes]:
    return [piece async for piece in write_csv(_aiter(rows))]


def _one_piece(rows: list[list[str]]) -> bytes:
    """The same rows written by csv.writer at once: what the stream must add up to."""
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


async def test_bytes_are_utf8_with_bom_crlf_and_minimal_quoting() -> None:
    pieces = await _collect([["a", "b"], ["日本語", 'say "hi", then'], ["x\ny", ""]])
    assert b"".join(pieces) == BOM + 'a,b\r\n日本語,"say ""hi"", then"\r\n"x\ny",\r\n'.encode()


async def test_empty_input_is_just_the_bom() -> None:
    assert await _collect([]) == [BOM]


async def test_large_output_is_streamed_in_bounded_pieces() -> None:
    rows = [[str(i), f"Product {i}", "https://out.example/" + "f" * 100] for i in range(10_000)]
    pieces = await _collect(rows)
    assert len(pieces) > 10
    assert max(len(p) for p in pieces) < 70 * 1024
    assert b"".join(pieces) == BOM + _one_piece(rows)
    parsed = list(csv.reader(io.StringIO(b"".join(pieces).decode("utf-8-sig"), newline="")))
    assert parsed == rows


NAMES = [
    "Dr. Who",
    "$9.99 deal",
    'The "big" one',
    "日本語の商品",
    "Party 🎉 pack",
    "a, b; c",
    "=1+1",
    "-5% sale",
    "@home",
    "line\nbreak",
]


async def test_round_trip_preserves_names_except_for_the_neutralising_quote() -> None:
    body = "".join(
        f'{i},"{name.replace(chr(34), 2 * chr(34))}","https://a.example/{i}/1.jpg, https://a.example/{i}/2.jpg"\r\n'
        for i, name in enumerate(NAMES, start=1)
    )
    source = (
        "\ufeffS. No.,Product Name,Input Image Urls,Notes\r\n" + body.replace("\r\n", ",+note\r\n")
    ).encode()
    reader = CsvReader(io.BytesIO(source), LIMITS)
    rows = [row for chunk in reader.chunks(3) for row in chunk]
    reader.raise_if_invalid()

    out_rows: list[Sequence[str]] = [output_header(reader.columns)]
    out_rows += [
        output_row(r.cells, [f"https://out.example/{r.serial}/{j}" for j in range(len(r.urls))]) for r in rows
    ]
    data = b"".join(await _collect(out_rows))
    assert data.startswith(BOM)

    parsed = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert parsed[0] == ["S. No.", "Product Name", "Input Image Urls", "Notes", OUTPUT_COLUMN]
    names = [line[1] for line in parsed[1:]]
    assert names == [("'" + n if n[0] in "=-@" else n) for n in NAMES]
    assert all(line[3] == "'+note" for line in parsed[1:])
    assert [line[4].split(", ") for line in parsed[1:]] == [
        [f"https://out.example/{i}/0", f"https://out.example/{i}/1"] for i in range(1, len(NAMES) + 1)
    ]

    # The output is itself a valid upload: someone may feed it back in.
    again = CsvReader(io.BytesIO(data), LIMITS)
    back = [row for chunk in again.chunks(100) for row in chunk]
    again.raise_if_invalid()
    assert [r.name for r in back] == names
