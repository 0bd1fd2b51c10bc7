"""Queries over the request read model, shared by the API (status, output CSV) and the notifier (email)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

from shared.output_csv import failed_entry, output_header, output_row, write_csv
from shared.storage import ROWS_PER_CHUNK, Doc, Store, row_chunk_key

OUTCOME_FIELDS = {"_id": 0, "index": 1, "status": 1, "file_id": 1, "url": 1, "reason": 1}
RECENT_CHUNKS = 64  # row chunks kept per process (up to ~64 MB; typically a few MB)
_recent_chunks: OrderedDict[str, Doc] = OrderedDict()


def image_url(base_url: str, file_id: str) -> str:
    return f"{base_url}/image/{file_id}"


def output_cell(outcome: Doc | None, base_url: str) -> str:
    """What the output CSV says for one image: its URL, or why it failed (commas would split the cell)."""
    if outcome is None:
        return "PENDING"
    if outcome["status"] == "COMPRESSED":
        return image_url(base_url, outcome["file_id"])
    return failed_entry(str(outcome.get("reason", "unknown")))


async def iter_rows(
    store: Store, request_id: str, first_row: int = 0, limit: int | None = None
) -> AsyncIterator[tuple[Doc, list[Doc | None]]]:
    """Yield (row, outcome of each of its images, aligned with row["urls"]) in CSV order.

    Both collections are read one chunk at a time on their indexes, so memory and the cost of a read
    stay bounded, however large the request and the store.
    """
    remaining = limit
    skip = first_row % ROWS_PER_CHUNK
    async for chunk in _row_chunks(store, request_id, first_row, limit):
        rows: list[Doc] = chunk["rows"]
        first_image = chunk["first_image"] + sum(len(r["urls"]) for r in rows[:skip])
        rows = rows[skip:] if remaining is None else rows[skip : skip + remaining]
        skip = 0
        end_image = first_image + sum(len(r["urls"]) for r in rows)
        outcomes = {
            doc["index"]: doc
            async for doc in store.images.find(
                {"request_id": request_id, "index": {"$gte": first_image, "$lt": end_image}},
                projection=OUTCOME_FIELDS,
            )
        }
        index = first_image
        for row in rows:
            yield row, [outcomes.get(i) for i in range(index, index + len(row["urls"]))]
            index += len(row["urls"])
        if remaining is not None:
            remaining -= len(rows)
            if remaining <= 0:
                break


async def _row_chunks(store: Store, request_id: str, first_row: int, limit: int | None) -> AsyncIterator[Doc]:
    first_chunk = first_row // ROWS_PER_CHUNK
    if limit is None:  # the whole request, streamed once (the output CSV): straight from the database
        cursor = store.rows.find(
            {"request_id": request_id, "chunk": {"$gte": first_chunk}},
            sort=[("chunk", 1)],
            batch_size=2,  # a chunk is up to ~1 MB: fetch a couple at a time, never the whole request
        )
        async for streamed in cursor:
            yield streamed
        return
    # A page (the status endpoint, polled over and over): rows never change once stored, so recently
    # read chunks are kept in memory and a poll costs only the outcomes it shows.
    for number in range(first_chunk, (first_row + limit - 1) // ROWS_PER_CHUNK + 1):
        key = row_chunk_key(request_id, number)
        chunk: Doc | None = _recent_chunks.get(key)
        if chunk is None:
            chunk = await store.rows.find_one({"_id": key})
            if chunk is None:
                return  # past the last row
            _recent_chunks[key] = chunk
            if len(_recent_chunks) > RECENT_CHUNKS:
                _recent_chunks.popitem(last=False)
        else:
            _recent_chunks.move_to_end(key)
        yield chunk


async def output_csv(
    store: Store, request_id: str, columns: list[str], base_url: str
) -> AsyncIterator[bytes]:
    """The output CSV, streamed: the input rows, then `Output Image Urls` aligned with the inputs."""

    async def rows() -> AsyncIterator[list[str]]:
        yield output_header(columns)
        async for row, outcomes in iter_rows(store, request_id):
            yield output_row(row["cells"], [output_cell(o, base_url) for o in outcomes])

    async for part in write_csv(rows()):
        yield part


async def output_csv_bytes(store: Store, request_id: str, columns: list[str], base_url: str) -> bytes:
    return b"".join([part async for part in output_csv(store, request_id, columns, base_url)])
