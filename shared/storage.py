"""MongoDB: the connection, the collections of the read model, their indexes, and GridFS storage.

Collections (per-request documents have ids "<request_id>:<n>", for idempotent writes, and carry
`request_id` and their position, indexed, for reads in order):

    requests       one document per upload: its settings, counters, status and delivery bookkeeping
    rows           the uploaded CSV rows, a chunk of ROWS_PER_CHUNK per document ("<rid>:<chunk>")
    images         one outcome per image, written by the status service ("<rid>:<index>")
    fs.files/.chunks   compressed images, in GridFS layout
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymongo
import structlog
from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridOut
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from shared.settings import Settings

log = structlog.get_logger()

ROWS_PER_CHUNK = 500
GRIDFS_CHUNK_BYTES = 255 * 1024  # GridFS's default chunk size
DUPLICATE_KEY = 11000
INDEX_WIDTH = 7  # zero-padded image index in ids, so the lexical _id order is the CSV order

Doc = dict[str, Any]


class UnknownRequest(LookupError):
    """An event names a request the database does not have: it fails, so the bus retries, then parks it."""


def image_key(request_id: str, index: int) -> str:
    return f"{request_id}:{index:0{INDEX_WIDTH}d}"


def row_chunk_key(request_id: str, chunk: int) -> str:
    return f"{request_id}:{chunk:0{INDEX_WIDTH}d}"


def output_file_id(request_id: str, index: int) -> str:
    """The GridFS id of an image's output: deterministic, so redelivered work overwrites rather than
    orphans, and unguessable, because it is derived from the secret request id."""
    return hashlib.blake2b(f"{request_id}:{index}".encode(), digest_size=16).hexdigest()


@dataclass
class Store:
    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]

    @property
    def requests(self) -> AsyncCollection[Doc]:
        return self.db["requests"]

    @property
    def rows(self) -> AsyncCollection[Doc]:
        return self.db["rows"]

    @property
    def images(self) -> AsyncCollection[Doc]:
        return self.db["images"]

    @property
    def files(self) -> AsyncCollection[Doc]:
        return self.db["fs.files"]

    @property
    def chunks(self) -> AsyncCollection[Doc]:
        return self.db["fs.chunks"]

    async def ensure_indexes(self) -> None:
        # GridFS's own indexes, created once here instead of probed on every upload (see put_file).
        await self.files.create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
        await self.chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
        # A request's rows and outcomes are read in order by (request_id, n): an equality prefix and a
        # range, which SecantusDB serves from the index (a range on `_id` alone it answers by a scan).
        await self.rows.create_index([("request_id", ASCENDING), ("chunk", ASCENDING)])
        await self.images.create_index([("request_id", ASCENDING), ("index", ASCENDING)])
        # Delivery bookkeeping: sparse flags, present only while there is something left to publish.
        # Query them by equality alone: SecantusDB uses an index only for a query on its fields.
        await self.requests.create_index("outbox_pending", sparse=True)
        await self.requests.create_index("completion_pending", sparse=True)

    async def ping(self) -> bool:
        """For readiness probes: answers within a second, whatever the database does."""
        try:
            with pymongo.timeout(1.0):
                await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def close(self) -> None:
        await self.client.close()

    # --- GridFS ---------------------------------------------------------------------------------------
    async def put_file(self, file_id: str, data: bytes, *, filename: str, metadata: Doc) -> None:
        """Store `data` as a GridFS file with a fixed id, readable by any GridFS client.

        PyMongo's GridFS writer probes both collections with an unfiltered find_one on every upload to
        decide whether to create indexes; on a database that answers that by scanning, each upload costs
        more as the store grows. We create the indexes at start-up and write the documents directly,
        which keeps the cost of one upload flat. Chunks are written first and the files document last,
        as GridFS does: a file is visible only once complete. Leftovers of an interrupted attempt under
        the same id always include chunk 0 (chunks go in order), so they show up as a duplicate key on
        the first insert and are removed then: the common case costs two writes, not three.
        """
        chunks = [
            {
                "_id": ObjectId(),
                "files_id": file_id,
                "n": n,
                "data": Binary(data[offset : offset + GRIDFS_CHUNK_BYTES]),
            }
            for n, offset in enumerate(range(0, max(len(data), 1), GRIDFS_CHUNK_BYTES))
        ]
        try:
            await self.chunks.insert_many(chunks)
        except BulkWriteError as exc:
            if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise
            await self.chunks.delete_many({"files_id": file_id})
            await self.chunks.insert_many(chunks)
        await self.files.replace_one(
            {"_id": file_id},
            {
                "_id": file_id,
                "length": len(data),
                "chunkSize": GRIDFS_CHUNK_BYTES,
                "uploadDate": datetime.now(UTC),
                "filename": filename,
                "metadata": metadata,
            },
            upsert=True,
        )

    async def file_info(self, file_id: str) -> Doc | None:
        return await self.files.find_one({"_id": file_id})

    async def open_file(self, file_id: str) -> AsyncGridOut:
        """Raises gridfs.errors.NoFile for an unknown id."""
        return await AsyncGridFSBucket(self.db).open_download_stream(file_id)


def connect_store(settings: Settings) -> Store:
    if not settings.mongo_url:
        raise RuntimeError("IMAGEPIPE_MONGO_URL is not set (make run sets it when it starts SecantusDB)")
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=5_000
    )
    return Store(client=client, db=client[settings.mongo_db])
