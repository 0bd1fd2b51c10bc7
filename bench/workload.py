"""What a user does to the system, timed: build a product CSV, upload it, wait for its outcomes."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from shared.mongo import Mongo

IMAGES_PER_PRODUCT = 4  # a product page usually has a few pictures


def product_csv(origin_url: str, tag: str, images: int, per_row: int = IMAGES_PER_PRODUCT) -> bytes:
    """A CSV of `images` distinct URLs (`<origin>/img/<tag>/<n>.jpg`), `per_row` per product."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for row, first in enumerate(range(0, images, per_row), start=1):
        urls = [f"{origin_url}/img/{tag}/{n}.jpg" for n in range(first, min(first + per_row, images))]
        writer.writerow([row, f"Product {row}", ", ".join(urls)])
    return out.getvalue().encode()


@dataclass(frozen=True)
class Upload:
    request_id: str
    images: int
    seconds: float  # POST /upload round trip, until the 202 is read
    csv_bytes: int


async def upload(http: aiohttp.ClientSession, api: str, csv_data: bytes) -> Upload:
    form = aiohttp.FormData()
    form.add_field("file", csv_data, filename="products.csv", content_type="text/csv")
    form.add_field("email", "bench@example.com")
    started = time.perf_counter()
    async with http.post(f"{api}/upload", data=form) as response:
        body = await response.json()
        seconds = time.perf_counter() - started
    if response.status != 202:
        raise RuntimeError(f"upload refused with {response.status}: {body}")
    return Upload(body["request_id"], body["images"], seconds, len(csv_data))


async def request_doc(mongo: Mongo, request_id: str) -> dict[str, Any]:
    doc = await mongo.requests.find_one({"_id": request_id}, projection={"rows": 0})
    if doc is None:
        raise LookupError(f"no request {request_id}")
    return doc


async def outcome_times(mongo: Mongo, request_id: str) -> list[datetime]:
    """When each image's outcome was recorded (the `images` collection's `at`)."""
    cursor = mongo.images.find({"request_id": request_id}, projection={"at": 1, "_id": 0})
    return [doc["at"] async for doc in cursor]


async def outcomes_recorded(mongo: Mongo, request_id: str) -> int:
    doc = await mongo.requests.find_one(
        {"_id": request_id}, projection={"no_img_compressed": 1, "no_img_failed": 1}
    )
    return 0 if doc is None else int(doc["no_img_compressed"] + doc["no_img_failed"])
