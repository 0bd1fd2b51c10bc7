"""Validation of uploaded CSVs by services.upload.csv_input: every rejection names row, column and reason."""

from __future__ import annotations

import io
import json
import tempfile
import tracemalloc

import pytest

from services.upload.csv_input import (
    MAX_PROBLEMS,
    CsvLimits,
    CsvReader,
    CsvRejected,
    ParsedRow,
    Problem,
    split_urls,
)
from shared.settings import Settings

HEADER = "S. No.,Product Name,Input Image Urls\n"
LIMITS = CsvLimits(
    max_bytes=1_000_000, max_rows=1_000, max_urls_per_row=5, max_images=2_000, max_url_length=200
)


def read(data: bytes | str, limits: CsvLimits = LIMITS, size: int = 100) -> tuple[CsvReader, list[ParsedRow]]:
    raw = data.encode() if isinstance(data, str) else data
    reader = CsvReader(io.BytesIO(raw), limits)
    rows = [row for chunk in reader.chunks(size) for row in chunk]
    return reader, rows


def accepted(data: bytes | str, limits: CsvLimits = LIMITS) -> list[ParsedRow]:
    reader, rows = read(data, limits)
    reader.raise_if_invalid()
    return rows


def rejected(data: bytes | str, status: int, limits: CsvLimits = LIMITS) -> list[Problem]:
    reader, _ = read(data, limits)
    with pytest.raises(CsvRejected) as info:
        reader.raise_if_invalid()
    assert info.value.status_code == status, info.value.problems
    json.dumps(
        [p.to_dict() for p in info.value.problems]
    )  # the API returns them as JSON: they must serialise
    return info.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


# --- accepted files ----------------------------------------------------------------------------------------


def test_example_file_is_parsed() -> None:
    reader, rows = read(
        HEADER
        + '1,SKU1,"https://a.example/1.jpg, https://a.example/2.jpg"\n2,SKU2,"https://a.example/3.jpg"\n'
    )
    reader.raise_if_invalid()
    assert reader.columns == ["S. No.", "Product Name", "Input Image Urls"]
    assert rows == [
        ParsedRow(
            "1",
            "SKU1",
            ("https://a.example/1.jpg", "https://a.example/2.jpg"),
            ("1", "SKU1", "https://a.example/1.jpg, https://a.example/2.jpg"),
        ),
        ParsedRow("2", "SKU2", ("https://a.example/3.jpg",), ("2", "SKU2", "https://a.example/3.jpg")),
    ]
    assert (reader.row_count, reader.image_count, reader.status_code) == (2, 3, None)


def test_rows_come_in_chunks_of_the_requested_size() -> None:
    data = HEADER + "".join(f"{i},P{i},https://a.example/{i}.jpg\n" for i in range(1, 8))
    reader = CsvReader(io.BytesIO(data.encode()), LIMITS)
    sizes = [len(chunk) for chunk in reader.chunks(3)]
    reader.raise_if_invalid()
    assert sizes == [3, 3, 1]


def test_utf8_bom_is_accepted_and_not_part_of_the_first_column() -> None:
    reader, rows = read(b"\xef\xbb\xbf" + (HEADER + "1,SKU1,https://a.example/1.jpg\n").encode())
    reader.raise_if_invalid()
    assert reader.columns[0] == "S. No."
    assert rows[0].serial == "1"


def test_windows_line_endings_blank_lines_and_whitespace_are_tolerated() -> None:
    data = (
        "  S. No. , Product Name ,Input Image Urls  \r\n"
        "\r\n"
        ' 1 ,  SKU1  ,  "  https://a.example/1.jpg ,  https://a.example/2.jpg  "\r\n'
        ",,\r\n"
        "   \r\n"
        '2, "SKU2", "https://a.example/3.jpg"\r\n'
    )
    reader, rows = read(data)
    reader.raise_if_invalid()
    assert reader.columns == ["S. No.", "Product Name", "Input Image Urls"]
    assert [(r.serial, r.name, r.urls) for r in rows] == [
        ("1", "SKU1", ("https://a.example/1.jpg", "https://a.example/2.jpg")),
        ("2", "SKU2", ("https://a.example/3.jpg",)),
    ]


def test_blank_lines_count_as_spreadsheet_rows_in_problem_numbers() -> None:
    problems = rejected(HEADER + "\n1,SKU1,https://a.example/1.jpg\n\n\n2,,https://a.example/2.jpg\n", 422)
    assert only(problems) == Problem(6, "Product Name", "blank product name")


def test_quoted_cell_with_line_breaks_separates_urls_and_stays_one_row() -> None:
    data = HEADER + '1,"Multi\nline name","https://a.example/1.jpg\nhttps://a.example/2.jpg\r\n"\n2,SKU2,\n'
    problems = rejected(data, 422)
    # Row 2 spans three lines of the file but is one spreadsheet row, so the next record is row 3.
    assert only(problems) == Problem(3, "Input Image Urls", "no image URLs")
    reader, rows = read(data.replace("2,SKU2,\n", "2,SKU2,https://a.example/3.jpg\n"))
    reader.raise_if_invalid()
    assert rows[0].name == "Multi\nline name"
    assert rows[0].urls == ("https://a.example/1.jpg", "https://a.example/2.jpg")


@pytest.mark.parametrize(
    ("cell", "urls"),
    [
        (
            "https://a.example/1.jpg,,https://a.example/2.jpg",
            ["https://a.example/1.jpg", "https://a.example/2.jpg"],
        ),
        ("https://a.example/1.jpg,", ["https://a.example/1.jpg"]),
        (", https://a.example/1.jpg , ", ["https://a.example/1.jpg"]),
        (
            "https://a.example/1.jpg\r\n\r\nhttps://a.example/2.jpg",
            ["https://a.example/1.jpg", "https://a.example/2.jpg"],
        ),
        (
            "https://a.example/1.jpg,\nhttps://a.example/2.jpg",
            ["https://a.example/1.jpg", "https://a.example/2.jpg"],
        ),
        # A CDN transformation: the comma is not followed by another URL, so it belongs to this one.
        (
            "https://cdn.example/image/upload/w_100,h_100/a.jpg",
            ["https://cdn.example/image/upload/w_100,h_100/a.jpg"],
        ),
        ("https://a.example/1.jpg,www.b.example/2.jpg", ["https://a.example/1.jpg", "www.b.example/2.jpg"]),
        (
            "https://a.example/1.jpg,ftp://b.example/2.jpg",
            ["https://a.example/1.jpg", "ftp://b.example/2.jpg"],
        ),
        ("https://a.example/1.jpg, b.jpg", ["https://a.example/1.jpg", "b.jpg"]),
        ("https://a.example/1.jpg,\tb.jpg", ["https://a.example/1.jpg", "b.jpg"]),
        ("https://a.example/1.jpg,b.jpg", ["https://a.example/1.jpg,b.jpg"]),
        ("", []),
        (" , ,", []),
    ],
)
def test_split_urls(cell: str, urls: list[str]) -> None:
    assert split_urls(cell) == urls


@pytest.mark.parametrize(
    "url",
    [
        "HTTPS://A.EXAMPLE/1.JPG",
        "http://a.example:8080/1.jpg",
        "https://user:pw@a.example/1.jpg",
        "http://[2001:db8::1]/1.jpg",
        "https://bücher.example/bild.jpg",
        "https://a.example/img?w=100&h=100#x",
        "https://a.example",
    ],
)
def test_unusual_but_valid_urls_are_accepted(url: str) -> None:
    rows = accepted(f'{HEADER}1,SKU1,"{url}"\n')
    assert rows[0].urls == (url,)


def test_names_are_preserved_exactly() -> None:
    names = ["Dr. Who $5", 'He said "hi"', "日本語の商品", "Emoji 🎉 set", "a,b;c", "=not a formula here"]
    body = "".join(
        f'{i},"{n.replace(chr(34), 2 * chr(34))}",https://a.example/{i}.jpg\n' for i, n in enumerate(names)
    )
    rows = accepted(HEADER + body)
    assert [r.name for r in rows] == names


def test_unquoted_quotes_inside_a_name_are_literal() -> None:
    rows = accepted(HEADER + '1,The "big" one,https://a.example/1.jpg\n')
    assert rows[0].name == 'The "big" one'


def test_header_match_ignores_case_and_whitespace_and_keeps_the_original_spelling() -> None:
    reader, rows = read(" s.no. ,PRODUCT NAME,input  image urls\n1,SKU1,https://a.example/1.jpg\n")
    reader.raise_if_invalid()
    assert reader.columns == ["s.no.", "PRODUCT NAME", "input  image urls"]
    assert rows[0].serial == "1"


def test_extra_columns_are_kept_in_order() -> None:
    data = (
        "Brand,S. No.,Input Image Urls,Notes,Product Name,,\n"
        "Acme,1,https://a.example/1.jpg, fragile ,SKU1,,\n"
    )
    reader, rows = read(data)
    reader.raise_if_invalid()
    assert reader.columns == ["Brand", "S. No.", "Input Image Urls", "Notes", "Product Name"]
    assert rows[0] == ParsedRow(
        "1", "SKU1", ("https://a.example/1.jpg",), ("Acme", "1", "https://a.example/1.jpg", "fragile", "SKU1")
    )


# --- not a CSV, encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100), "PNG image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100), "JPEG image"),
        (b"PK\x03\x04\x14\x00\x06\x00" + bytes(100), "Excel workbook (.xlsx)"),
        (b"%PDF-1.7\n", "PDF"),
        ("S. No.,Product Name,Input Image Urls\n".encode("utf-16"), "UTF-16"),
        (b"S. No.,Product Name\x00,Input Image Urls\n1,SKU1,https://a.example/1.jpg\n", "NUL bytes"),
    ],
)
def test_binary_files_are_415(data: bytes, what: str) -> None:
    problem = only(rejected(data, 415))
    assert (problem.row, problem.column) == (None, None)
    assert what in problem.reason and "not a CSV" in problem.reason


def test_undecodable_bytes_are_415_naming_row_and_column() -> None:
    data = (
        (HEADER + "1,Cafe,https://a.example/1.jpg\n2,Caf").encode() + b"\xe9" + b",https://a.example/2.jpg\n"
    )
    problem = only(rejected(data, 415))
    assert (problem.row, problem.column) == (3, "Product Name")
    assert "not UTF-8" in problem.reason and "0xE9" in problem.reason


def test_undecodable_header_is_reported_without_breaking_json() -> None:
    data = b"S. No.,Product Name,Input Image Urls,Prix \x80\n1,SKU1,https://a.example/1.jpg,3\n"
    problem = only(rejected(data, 415))
    assert (problem.row, problem.column) == (1, "Prix \ufffd")


# --- empty, header ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\n\r\n  \n", b",,\n"])
def test_empty_file_is_400(data: bytes) -> None:
    assert only(rejected(data, 400)) == Problem(None, None, "the file is empty")


def test_header_without_rows_is_400() -> None:
    assert only(rejected(HEADER + "\n,,\n", 400)) == Problem(
        None, None, "the file has a header but no data rows"
    )


def test_misspelt_column_is_named_with_the_closest_header() -> None:
    problem = only(rejected("S. No.,Product Name,Input Image URL\n1,SKU1,https://a.example/1.jpg\n", 422))
    assert (problem.row, problem.column) == (1, "Input Image Urls")
    assert problem.reason == "missing column 'Input Image Urls' (found 'Input Image URL')"


def test_missing_column_without_a_close_match_lists_the_header() -> None:
    problems = rejected("S. No.,Product Name,Colour\n1,SKU1,red\n", 422)
    assert only(problems).reason == (
        "missing column 'Input Image Urls' (the header has 'S. No.', 'Product Name', 'Colour')"
    )


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_header_in_one_cell_names_its_separator(separator: str) -> None:
    """A spreadsheet's export with semicolons (or tabs) instead of commas: say so, not just 'missing'."""
    header = separator.join(("S. No.", "Product Name", "Input Image Urls"))
    problems = rejected(f"{header}\n1{separator}SKU1{separator}https://a.example/1.jpg\n", 422)
    assert [p.column for p in problems] == ["S. No.", "Product Name", "Input Image Urls"]
    assert all(f"separated by {separator!r}: columns are separated by commas" in p.reason for p in problems)


def test_every_missing_column_is_reported_on_the_header_row() -> None:
    problems = rejected("\n\nSr No,Name\n1,SKU1\n", 422)
    assert [(p.row, p.column) for p in problems] == [
        (3, "S. No."),
        (3, "Product Name"),
        (3, "Input Image Urls"),
    ]


def test_duplicate_required_column_is_422() -> None:
    problem = only(
        rejected("S. No.,Product Name,Input Image Urls,product name\n1,a,https://a.example/1.jpg,b\n", 422)
    )
    assert problem == Problem(1, "Product Name", "column 'Product Name' appears 2 times (columns 2, 4)")


# --- cells -------------------------------------------------------------------------------------------------


def test_blank_serial_number() -> None:
    assert only(rejected(HEADER + ",SKU1,https://a.example/1.jpg\n", 422)) == Problem(
        2, "S. No.", "blank serial number"
    )


def test_duplicate_serial_number_names_the_earlier_row() -> None:
    data = HEADER + "7,A,https://a.example/1.jpg\n8,B,https://a.example/2.jpg\n7,C,https://a.example/3.jpg\n"
    assert only(rejected(data, 422)) == Problem(4, "S. No.", "serial number '7' is already used on row 2")


def test_blank_product_name() -> None:
    assert only(rejected(HEADER + '1,"  ",https://a.example/1.jpg\n', 422)) == Problem(
        2, "Product Name", "blank product name"
    )


@pytest.mark.parametrize("cell", ["", '" , ,"'])
def test_row_without_urls(cell: str) -> None:
    assert only(rejected(f"{HEADER}1,SKU1,{cell}\n", 422)) == Problem(2, "Input Image Urls", "no image URLs")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://a.example/1.jpg", "scheme 'ftp' is not allowed; only http and https"),
        ("www.a.example/1.jpg", "must start with http:// or https://"),
        ("javascript:alert(1)", "must start with http:// or https://"),
        ("https://", "no host name"),
        ("http:///1.jpg", "no host name"),
        ("https://a.example/my image.jpg", "contains a space or control character"),
        ("http://[::1/1.jpg", "malformed URL"),
        ("https://a.example:99999/1.jpg", "malformed URL"),
        ("https://a.example/" + "x" * 200, "longer than 200 characters"),
    ],
)
def test_bad_url_is_named(url: str, why: str) -> None:
    problem = only(rejected(f'{HEADER}1,SKU1,"https://a.example/ok.jpg, {url}"\n', 422))
    assert (problem.row, problem.column) == (2, "Input Image Urls")
    shown = url if len(url) <= 80 else url[:79] + "…"
    assert problem.reason.startswith(f"invalid URL '{shown}': {why}")


def test_row_with_missing_cells() -> None:
    problem = only(rejected(HEADER + "1,SKU1\n", 422))
    assert (problem.row, problem.column) == (2, "Input Image Urls")
    assert problem.reason == "the row has 2 cells but the header has 3: 'Input Image Urls' is missing"


def test_row_with_too_many_cells_hints_at_quoting() -> None:
    problem = only(rejected(HEADER + "1,SKU1,https://a.example/1.jpg, https://a.example/2.jpg\n", 422))
    assert (problem.row, problem.column) == (2, None)
    assert "4 cells but the header has 3" in problem.reason and "double quotes" in problem.reason


def test_trailing_blank_cells_are_ignored() -> None:
    rows = accepted(HEADER + "1,SKU1,https://a.example/1.jpg,,, \n")
    assert rows[0].cells == ("1", "SKU1", "https://a.example/1.jpg")


def test_unterminated_quote_is_400_at_the_row_where_it_opens() -> None:
    data = HEADER + '1,SKU1,https://a.example/1.jpg\n2,"SKU2,https://a.example/2.jpg\n3,SKU3,x\n'
    problem = only(rejected(data, 400))
    assert problem.row == 3 and "never closed" in problem.reason


def test_text_after_a_closing_quote_is_400() -> None:
    problem = only(rejected(HEADER + '1,"SKU" 1,https://a.example/1.jpg\n', 400))
    assert problem.row == 2 and "closing quote must be followed by a comma" in problem.reason


def test_all_problems_are_reported_but_rows_stop_after_the_first() -> None:
    data = HEADER + "".join(
        f"{i},{'' if i in (3, 9) else f'P{i}'},https://a.example/{i}.jpg\n" for i in range(1, 11)
    )
    reader, rows = read(data, size=1)
    assert [r.serial for r in rows] == ["1", "2"]  # rows after the first problem are not handed out
    with pytest.raises(CsvRejected) as info:
        reader.raise_if_invalid()
    assert [(p.row, p.column) for p in info.value.problems] == [(4, "Product Name"), (10, "Product Name")]
    assert "row 4, column 'Product Name': blank product name (and 1 more)" in str(info.value)


def test_problem_list_is_capped_with_a_count_of_the_rest() -> None:
    data = HEADER + "".join(f"{i},,https://a.example/{i}.jpg\n" for i in range(MAX_PROBLEMS + 50))
    problems = rejected(data, 422)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == Problem(None, None, "… and 50 more problems")


def test_most_fundamental_status_wins_and_is_always_listed() -> None:
    body = "".join(f"{i},,https://a.example/{i}.jpg\n" for i in range(MAX_PROBLEMS + 5))
    data = (HEADER + body).encode() + b"999,Caf\xe9,https://a.example/x.jpg\n"
    problems = rejected(data, 415)
    assert problems[MAX_PROBLEMS].row == MAX_PROBLEMS + 7 and "0xE9" in problems[MAX_PROBLEMS].reason
    assert problems[-1].reason == "… and 5 more problems"


# --- limits ------------------------------------------------------------------------------------------------


def test_too_many_urls_in_a_row_is_422() -> None:
    urls = ", ".join(f"https://a.example/{i}.jpg" for i in range(6))
    assert only(rejected(f'{HEADER}1,SKU1,"{urls}"\n', 422)) == Problem(
        2, "Input Image Urls", "6 URLs in one row; at most 5"
    )


def test_too_many_rows_is_413_and_reading_stops() -> None:
    data = (HEADER + "".join(f"{i},P{i},https://a.example/{i}.jpg\n" for i in range(50_000))).encode()
    source = io.BytesIO(data)
    reader = CsvReader(source, LIMITS)
    for _ in reader.chunks(100):
        pass
    with pytest.raises(CsvRejected) as info:
        reader.raise_if_invalid()
    assert info.value.status_code == 413
    assert info.value.problems == [Problem(LIMITS.max_rows + 2, None, "more than 1000 data rows")]
    assert source.tell() < 200_000 < len(data)


def test_too_many_images_is_413() -> None:
    limits = CsvLimits(max_bytes=10**6, max_rows=100, max_urls_per_row=5, max_images=8, max_url_length=200)
    urls = ", ".join(f"https://a.example/{i}.jpg" for i in range(3))
    data = HEADER + "".join(f'{i},P{i},"{urls}"\n' for i in range(10))
    assert only(rejected(data, 413, limits)) == Problem(4, "Input Image Urls", "more than 8 images in total")


def test_too_many_bytes_is_413_and_reading_stops() -> None:
    data = (HEADER + "".join(f"{i},P{i},https://a.example/{i}.jpg\n" for i in range(200_000))).encode()
    source = io.BytesIO(data)
    limits = CsvLimits(
        max_bytes=100_000, max_rows=10**6, max_urls_per_row=5, max_images=10**6, max_url_length=200
    )
    problems = rejected_source(source, 413, limits)
    assert problems == [Problem(None, None, "the file is larger than 100000 bytes")]
    assert source.tell() <= 100_000 + 64 * 1024 < len(data)


def rejected_source(source: io.BytesIO, status: int, limits: CsvLimits) -> list[Problem]:
    reader = CsvReader(source, limits)
    for _ in reader.chunks(100):
        pass
    with pytest.raises(CsvRejected) as info:
        reader.raise_if_invalid()
    assert info.value.status_code == status
    return info.value.problems


def test_a_file_without_line_breaks_is_refused_without_reading_it_into_one_string() -> None:
    data = (HEADER + "1,SKU1,https://a.example/" + "x" * 3_000_000).encode()
    limits = CsvLimits(max_bytes=10**7, max_rows=10, max_urls_per_row=5, max_images=10, max_url_length=2048)
    source = io.BytesIO(data)
    problem = only(rejected_source(source, 400, limits))
    assert problem.row == 2 and "longer than" in problem.reason
    assert source.tell() < 2_000_000


def test_memory_does_not_grow_with_the_file() -> None:
    limits = CsvLimits(
        max_bytes=20 * 1024**2, max_rows=1000, max_urls_per_row=50, max_images=10**5, max_url_length=2048
    )
    with tempfile.TemporaryFile() as source:
        source.write(HEADER.encode())
        for i in range(60):  # 60 rows of 50 URLs of ~2 KB: a 6 MB file
            urls = ", ".join(f"https://a.example/{i}/{j}/{'x' * 1990}.jpg" for j in range(50))
            source.write(f'{i},P{i},"{urls}"\n'.encode())
        size = source.tell()
        source.seek(0)
        tracemalloc.start()
        try:
            reader = CsvReader(source, limits)
            for chunk in reader.chunks(1):
                del chunk
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        reader.raise_if_invalid()
    assert reader.image_count == 3000
    assert peak < size / 3, (peak, size)


def test_100k_rows_parse_in_bounded_chunks() -> None:
    """How fast is the benchmark's business (`make bench`: the 100,000-row upload); here, that it works."""
    data = HEADER + "".join(
        f"{i},Product {i},https://img.example.com/p/{i}/main.jpg\r\n" for i in range(100_000)
    )
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024**2) as source:
        source.write(data.encode())
        source.seek(0)
        reader = CsvReader(source, CsvLimits.from_settings(Settings()))  # type: ignore[arg-type]
        sizes = [len(chunk) for chunk in reader.chunks(500)]
        reader.raise_if_invalid()
    assert (sum(sizes), max(sizes), len(sizes)) == (100_000, 500, 200)


# --- API contract ------------------------------------------------------------------------------------------


def test_limits_from_settings() -> None:
    s = Settings(max_csv_bytes=1, max_rows=2, max_urls_per_row=3, max_images=4, max_url_length=5)
    assert CsvLimits.from_settings(s) == CsvLimits(1, 2, 3, 4, 5)


def test_rejection_serialises_row_column_and_reason() -> None:
    reader, _ = read(HEADER + "1,,https://a.example/1.jpg\n")
    with pytest.raises(CsvRejected) as info:
        reader.raise_if_invalid()
    assert {"detail": str(info.value), "problems": [p.to_dict() for p in info.value.problems]} == {
        "detail": "The CSV has invalid content: row 2, column 'Product Name': blank product name",
        "problems": [{"row": 2, "column": "Product Name", "field": None, "reason": "blank product name"}],
    }


def test_misuse_is_a_programming_error() -> None:
    reader = CsvReader(io.BytesIO(HEADER.encode()), LIMITS)
    with pytest.raises(RuntimeError):
        reader.raise_if_invalid()
    list(reader.chunks(10))
    with pytest.raises(RuntimeError):
        list(reader.chunks(10))
    with pytest.raises(ValueError):
        list(CsvReader(io.BytesIO(b""), LIMITS).chunks(0))


def test_nul_bytes_after_the_first_kib_are_refused_as_binary() -> None:
    rows = "".join(f"{n},SKU{n},https://a.example/{n}.jpg\n" for n in range(1, 200))
    data = (HEADER + rows).encode() + b"200,SKU\x00200,https://a.example/200.jpg\n"
    assert len(HEADER + rows) > 2 * 1024  # past what the first-KiB sniff sees
    (problem,) = rejected(data, 415)
    assert problem.row == 201 and "NUL byte" in problem.reason


def test_a_row_larger_than_the_row_limit_is_refused_naming_the_limit() -> None:
    limits = CsvLimits(
        max_bytes=10**7,
        max_rows=10,
        max_urls_per_row=5,
        max_images=10,
        max_url_length=200,
        max_row_bytes=65536,
    )
    notes = ",".join(["x" * 60_000, "y" * 60_000])
    data = f"S. No.,Product Name,Input Image Urls,A,B\n1,P,https://a.example/1.jpg,{notes}\n"
    (problem,) = rejected(data, 413, limits)
    assert problem.row == 2 and "a row may hold at most 65536" in problem.reason
    # Non-ASCII text is measured in bytes, as it is stored.
    wide = "é" * 20_000  # 20,000 characters, 40,000 bytes
    data = f"S. No.,Product Name,Input Image Urls,A,B\n1,P,https://a.example/1.jpg,{wide},{wide}\n"
    rejected(data, 413, limits)
