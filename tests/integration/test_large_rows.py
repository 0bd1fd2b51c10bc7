"""A CSV inside the documented limits whose rows are large: long presigned-style URLs, 12 to a row.

Before, a chunk of 500 such rows kept every URL twice and exceeded the database's 16 MiB document limit:
the upload answered 500 and left rows behind. Now it is accepted and processed end to end through the API
(status pages, the outcomes, the output CSV), and a row too large to store is refused up front, naming the
limit, with nothing left behind.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from shared.mongo import Mongo
from shared.repository import ROWS_PER_CHUNK, MongoRequestRepository, OutcomeDoc, OutcomeStatus
from shared.settings import Settings
from tests.integration.test_api import client_for, post_csv

ROWS, URLS_PER_ROW, URL_LENGTH = 600, 12, 1_400  # two chunks; the first held 16.8 MB as it was stored


def presigned(row: int, n: int) -> str:
    base = f"https://bucket.s3.eu-west-1.amazonaws.com/products/{row:05d}/{n:02d}.jpg?X-Amz-Signature="
    return base + f"{row:05d}{n:02d}" * ((URL_LENGTH - len(base)) // 7 + 1)


@pytest.fixture
async def api(settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings.model_copy(update={"max_url_length": 2048})):
        yield client


async def test_a_csv_of_long_urls_is_accepted_and_processed_end_to_end(
    api: httpx.AsyncClient, mongo: Mongo, repo: MongoRequestRepository
) -> None:
    urls = [[presigned(row, n)[:URL_LENGTH] for n in range(URLS_PER_ROW)] for row in range(ROWS)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls", "Notes"])
    for row, row_urls in enumerate(urls):
        writer.writerow([row + 1, f"SKU {row + 1}", ", ".join(row_urls), f"note {row}"])
    data = out.getvalue().encode()
    assert len(data) < 20 * 1024 * 1024  # inside the 20 MiB limit
    assert 2 * ROWS_PER_CHUNK * URLS_PER_ROW * URL_LENGTH > 16 * 1024 * 1024  # each URL twice: over 16 MiB

    response = await post_csv(api, data)
    assert response.status_code == 202, response.text[:500]
    request_id = response.json()["request_id"]
    assert response.json()["images"] == ROWS * URLS_PER_ROW
    assert await mongo.rows.count_documents({"request_id": request_id}) > -(-ROWS // ROWS_PER_CHUNK)  # parts

    # A status page across a chunk boundary shows each row's own URLs.
    page = (await api.get(f"/status/{request_id}", params={"offset": 495, "limit": 10})).json()
    assert [p["input_urls"] for p in page["product_details"]] == urls[495:505]

    # Every image gets an outcome, as the compressors and the status service would record them.
    flat = [url for row_urls in urls for url in row_urls]
    for start in range(0, len(flat), 500):
        batch = [
            OutcomeDoc(
                request_id=request_id,
                index=i,
                url=flat[i],
                status=OutcomeStatus.COMPRESSED,
                at=datetime.now(UTC),
                file_id=f"{i:032x}",
                input_bytes=10,
                output_bytes=5,
            )
            for i in range(start, min(start + 500, len(flat)))
        ]
        await repo.record_outcomes(request_id, batch)

    output = await api.get(f"/output/{request_id}")
    assert output.status_code == 200
    rows = list(csv.reader(io.StringIO(output.content.decode("utf-8-sig"))))
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Notes", "Output Image Urls"]
    assert len(rows) == ROWS + 1
    for row, row_urls in zip(rows[1:], urls, strict=True):
        assert row[2].split(", ") == row_urls  # the URL cell, stored once, rebuilt
        outputs = row[4].split(", ")
        assert len(outputs) == URLS_PER_ROW and all(o.startswith("http://") for o in outputs)


async def test_a_row_too_large_to_store_is_refused_up_front_and_leaves_nothing(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    cell = '"' + ("x" * 999 + "\n") * 150 + '"'  # 150 KB over many lines (no line is too long)
    notes = ",".join([cell] * 8)  # 1.2 MB in one row: over the 1 MiB row limit
    data = "S. No.,Product Name,Input Image Urls," + ",".join(f"N{i}" for i in range(8)) + "\n"
    data += "1,A,https://img.example.com/a.jpg," + ",".join(["y"] * 8) + "\n"
    data += f"2,B,https://img.example.com/b.jpg,{notes}\n"
    response = await post_csv(api, data)
    assert response.status_code == 413
    (problem,) = response.json()["problems"]
    assert problem["row"] == 3 and "a row may hold at most 1048576" in problem["reason"]
    assert await mongo.rows.count_documents({}) == 0 and await mongo.requests.count_documents({}) == 0
