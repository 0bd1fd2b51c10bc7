"""Compressed images, stored in GridFS layout (`fs.files` and `fs.chunks`), so any GridFS client reads them.

An output's id is derived from its request, its position and the image options it was made with
(`output_file_id`): a redelivered image overwrites its own output instead of orphaning a copy, nobody can
guess an id without the secret request id, and an output is only ever found again (the compressor's
redelivery check) under the options that made it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NotRequired, Protocol, TypedDict

from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.errors import DuplicateKeyError

from shared.image_options import ImageOptions
from shared.mongo import Doc, Mongo, Session, StorageError, adapts_driver_errors

GRIDFS_CHUNK_BYTES = 255 * 1024  # GridFS's default chunk size
PURGE_BATCH = 100  # files deleted per transaction: bounded work, few round trips


def output_file_id(request_id: str, index: int, options: ImageOptions | None = None) -> str:
    """The id of an image's output: deterministic, so redelivered work overwrites rather than orphans, and
    unguessable, because it is derived from the secret request id.

    A request's options never change, so today (request, index) alone would do; the options are part of
    the key all the same, so that nothing that ever reuses outputs (a re-run with other options, a cache)
    can serve one made differently. The defaults add nothing: outputs of requests without options keep
    the ids they always had.
    """
    key = f"{request_id}:{index}"
    if options is not None and (options_key := options.cache_key()):
        key += f":{options_key}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


class ImageMeta(TypedDict):
    contentType: str  # GridFS's conventional name, which other GridFS tools show
    request_id: str
    index: int
    input_bytes: int
    kept_original: bool
    # what the outcome reports, so a redelivery reports it again (absent on files stored before options)
    width: NotRequired[int | None]
    height: NotRequired[int | None]
    quality: NotRequired[int | None]
    score: NotRequired[float | None]


@dataclass(frozen=True)
class StoredImage:
    file_id: str
    length: int
    meta: ImageMeta


@dataclass
class ImageDownload:
    content_type: str
    length: int
    chunks: AsyncIterator[bytes]


class ImageStore(Protocol):
    async def put(self, file_id: str, data: bytes, *, filename: str, meta: ImageMeta) -> StoredImage:
        """Store `data` unless a complete file is already stored under `file_id`; returns what is stored."""

    async def info(self, file_id: str) -> StoredImage | None: ...

    async def open(self, file_id: str) -> ImageDownload | None: ...

    async def purge(self, request_id: str) -> int:
        """Delete every image of the request, a batch of files at a time (each batch whole: its files
        documents and chunks in one transaction, so a half-deleted image is never served); returns how
        many files were deleted. Idempotent."""
        ...


@adapts_driver_errors
class GridFsImageStore:
    def __init__(self, mongo: Mongo) -> None:
        self.mongo = mongo

    async def put(self, file_id: str, data: bytes, *, filename: str, meta: ImageMeta) -> StoredImage:
        """Store `data` under a fixed id, unless a complete file is already stored there; either way, return
        what is stored under the id.

        One transaction writes the files document and every chunk, so two writers of one id (a relay
        republish, a lease takeover, two occurrences of a URL) can never leave a mixed or partial file:
        the first to commit wins whole, and the others find its files document, roll back, and report
        the winner's file (the outcome they publish then describes exactly what is stored). Chunks left by
        a writer that died before this scheme (no files document) are replaced within the transaction.

        PyMongo's GridFS writer probes both collections with an unfiltered find_one on every upload to
        decide whether to create indexes; on a database that answers that by scanning, each upload costs
        more as the store grows. The indexes are made at start-up instead (mongo.py) and the documents
        written directly, which keeps the cost of one upload flat.
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
        files_doc: Doc = {
            "_id": file_id,
            "length": len(data),
            "chunkSize": GRIDFS_CHUNK_BYTES,
            "uploadDate": datetime.now(UTC),
            "filename": filename,
            "metadata": dict(meta),
        }

        async def write(session: Session) -> None:
            # The files document first: a second writer stops there, before sending any chunk.
            await self.mongo.files.insert_one(files_doc, session=session)
            await self.mongo.chunks.delete_many({"files_id": file_id}, session=session)
            await self.mongo.chunks.insert_many(chunks, session=session)

        try:
            await self.mongo.transaction(write)
        except StorageError as exc:
            stored = await self.info(file_id) if isinstance(exc.__cause__, DuplicateKeyError) else None
            if stored is None:
                raise
            return stored
        return StoredImage(file_id, len(data), meta)

    async def info(self, file_id: str) -> StoredImage | None:
        doc = await self.mongo.files.find_one({"_id": file_id})
        return None if doc is None else StoredImage(file_id, doc["length"], doc["metadata"])

    async def open(self, file_id: str) -> ImageDownload | None:
        try:
            grid_out = await AsyncGridFSBucket(self.mongo.db).open_download_stream(file_id)
        except NoFile:
            return None

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await grid_out.readchunk():
                yield chunk

        content_type = (grid_out.metadata or {}).get("contentType", "application/octet-stream")
        return ImageDownload(content_type, grid_out.length, chunks())

    async def purge(self, request_id: str) -> int:
        purged = 0
        while ids := [
            doc["_id"]
            async for doc in self.mongo.files.find(
                {"metadata.request_id": request_id}, projection={"_id": 1}
            ).limit(PURGE_BATCH)
        ]:

            async def delete(session: Session, ids: list[str] = ids) -> None:
                await self.mongo.chunks.delete_many({"files_id": {"$in": ids}}, session=session)
                await self.mongo.files.delete_many({"_id": {"$in": ids}}, session=session)

            await self.mongo.transaction(delete)
            purged += len(ids)
        return purged
