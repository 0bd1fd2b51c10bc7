"""Compressed images, stored in GridFS layout (`fs.files` and `fs.chunks`), so any GridFS client reads them.

An output's id is derived from its request, its position and the image options it was made with
(`output_file_id`): a redelivered image overwrites its own output instead of orphaning a copy, nobody can
guess an id without the secret request id, and an output is only ever found again (the compressor's
redelivery check) under the options that made it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NotRequired, Protocol, TypedDict

from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.image_options import ImageOptions
from shared.mongo import DUPLICATE_KEY, Doc, Mongo, Session, StorageError, adapts_driver_errors

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

        Readers find a file only through its files document, so it is written last: whatever is stored
        under the id is whole. The unique index on (files_id, n) lets only one writer hold a chunk
        position, so two writers of one id (a relay republish, a lease takeover, two occurrences of a URL)
        never mix: the first to store its files document wins whole, and the others report the winner's
        file (the outcome they publish then describes exactly what is stored).

        A file of one chunk (nearly every output) takes two plain inserts, the chunk, then the files
        document. A larger file, or a chunk position already taken without a files document (a writer
        that died, or one still writing), goes through one transaction that writes the files document
        and every chunk, replacing any chunks it meets: a plain writer still between its two inserts
        then finds the files document taken and reports the transaction's file, whose chunks are the only
        ones left. Plain inserts are safe for one chunk only: after its chunk, a plain writer has nothing
        left to write but the files document, so it can never add a chunk to a file someone else stored.

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

        replacing: tuple[bool, ...] = (False, True)
        if len(chunks) == 1:
            if (stored := await self._put_plain(chunks[0], files_doc, meta)) is not None:
                return stored
            replacing = (True,)  # the chunk position is taken without a files document
        return await self._put_in_transaction(chunks, files_doc, meta, replacing)

    async def _put_plain(self, chunk: Doc, files_doc: Doc, meta: ImageMeta) -> StoredImage | None:
        """The chunk, then the files document, outside a transaction; None if the chunk position is taken
        without a files document."""
        try:
            await self.mongo.chunks.insert_one(chunk)
            await self.mongo.files.insert_one(files_doc)
        except DuplicateKeyError:
            return await self.info(files_doc["_id"])
        return StoredImage(files_doc["_id"], files_doc["length"], meta)

    async def _put_in_transaction(
        self, chunks: list[Doc], files_doc: Doc, meta: ImageMeta, replacing: tuple[bool, ...]
    ) -> StoredImage:
        file_id = files_doc["_id"]

        async def write(session: Session, *, replace: bool) -> None:
            # The files document first: a second writer stops there, before sending any chunk.
            await self.mongo.files.insert_one(files_doc, session=session)
            if replace:
                await self.mongo.chunks.delete_many({"files_id": file_id}, session=session)
            await self.mongo.chunks.insert_many(chunks, session=session)

        # Chunks without a files document are cleared only when an attempt meets them, which saves a
        # statement on every other upload.
        for replace in replacing:
            try:
                await self.mongo.transaction(functools.partial(write, replace=replace))
            except StorageError as exc:
                if isinstance(exc.__cause__, DuplicateKeyError):  # the files document: another writer won
                    if (stored := await self.info(file_id)) is not None:
                        return stored
                    raise
                if replace or not isinstance(exc.__cause__, BulkWriteError) or not _duplicates(exc.__cause__):
                    raise
            else:
                break
        return StoredImage(file_id, files_doc["length"], meta)

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


def _duplicates(error: BulkWriteError) -> bool:
    """The bulk write failed only on keys already taken (chunks an earlier writer left)."""
    errors = error.details.get("writeErrors", [])
    return bool(errors) and all(e.get("code") == DUPLICATE_KEY for e in errors)
