"""GridFS storage against the real wire-protocol database."""

from __future__ import annotations

import asyncio
import os

import pytest
from gridfs import AsyncGridFSBucket
from pymongo import monitoring

from shared.files import GRIDFS_CHUNK_BYTES, GridFsImageStore, ImageMeta
from shared.mongo import Mongo

META = ImageMeta(contentType="image/jpeg", request_id="r", index=0, input_bytes=1, kept_original=False)


async def read(images: GridFsImageStore, file_id: str) -> bytes:
    download = await images.open(file_id)
    assert download is not None
    return b"".join([chunk async for chunk in download.chunks])


async def test_put_file_is_readable_by_any_gridfs_client(mongo: Mongo) -> None:
    data = os.urandom(GRIDFS_CHUNK_BYTES * 2 + 123)  # three chunks, the last one partial
    await GridFsImageStore(mongo).put("a" * 32, data, filename="x.jpg", meta=META)

    grid_out = await AsyncGridFSBucket(mongo.db).open_download_stream("a" * 32)
    assert await grid_out.read() == data
    assert grid_out.metadata == dict(META)
    assert grid_out.filename == "x.jpg"


async def test_a_second_write_of_a_stored_id_changes_nothing_and_reports_the_stored_file(
    mongo: Mongo,
) -> None:
    images = GridFsImageStore(mongo)
    first = os.urandom(GRIDFS_CHUNK_BYTES * 3)
    await images.put("b" * 32, first, filename="x", meta=META)
    stored = await images.put("b" * 32, b"short", filename="x", meta={**META, "contentType": "image/webp"})

    assert (stored.length, stored.meta["contentType"]) == (len(first), "image/jpeg")
    assert await mongo.chunks.count_documents({"files_id": "b" * 32}) == 3
    assert await read(images, "b" * 32) == first


@pytest.mark.parametrize("max_chunks", [1, 4], ids=["one-chunk outputs", "mixed sizes"])
async def test_concurrent_writers_of_one_id_leave_exactly_one_whole_file(
    mongo: Mongo, max_chunks: int
) -> None:
    """A relay republish or a lease takeover: several compressors store the same output id at once, with
    outputs of different sizes. One of them wins whole; the others report the winner's file. One-chunk
    outputs are stored by plain inserts, larger ones in a transaction: both kinds meet here."""
    images = GridFsImageStore(mongo)
    for round_no in range(3):
        file_id = f"{max_chunks:08x}{round_no:024x}"
        outputs = [bytes([n]) * (GRIDFS_CHUNK_BYTES * (n % max_chunks) + 1000 * n + 1) for n in range(8)]
        metas = [ImageMeta(**{**META, "index": n}) for n in range(8)]  # type: ignore[typeddict-item]
        reported = await asyncio.gather(
            *(
                images.put(file_id, data, filename="x", meta=meta)
                for data, meta in zip(outputs, metas, strict=False)
            )
        )

        data = await read(images, file_id)
        winner = data[0]
        assert data == outputs[winner], "a mixed or partial file"
        info = await images.info(file_id)
        assert info is not None and info.meta["index"] == winner and info.length == len(data)
        assert {(r.length, r.meta["index"]) for r in reported} == {(len(data), winner)}
        chunks = [c["n"] async for c in mongo.chunks.find({"files_id": file_id})]
        assert sorted(chunks) == list(range(len(chunks))), "orphaned or missing chunks"


class _Queries(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[tuple[str, dict]] = []  # type: ignore[type-arg]

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_storing_a_file_never_scans_a_collection(settings, mongo: Mongo) -> None:  # type: ignore[no-untyped-def]
    """PyMongo's GridFS writer issues an unfiltered find_one per upload, which SecantusDB answers by a scan
    (so each upload gets slower as the store grows). Ours must only issue filtered, indexed commands."""
    from bson import Binary, ObjectId
    from pymongo import AsyncMongoClient

    # Chunks an interrupted writer left, so that the writer's clean-up (a delete) is watched as well.
    await mongo.chunks.insert_one({"_id": ObjectId(), "files_id": f"{0:032x}", "n": 0, "data": Binary(b"")})
    listener = _Queries()
    client = AsyncMongoClient(settings.mongo_url, event_listeners=[listener])
    watched = GridFsImageStore(Mongo(client, client[settings.mongo_db]))
    for n in range(3):
        await watched.put(f"{n:032x}", os.urandom(1000), filename="x", meta=META)
    await client.close()

    observed = [
        (name, cmd) for name, cmd in listener.commands if name in ("find", "delete", "update", "insert")
    ]
    assert {"insert", "delete"} <= {name for name, _ in observed}, "expected the writer's commands"
    for name, cmd in observed:
        if name == "find":
            assert cmd.get("filter"), f"unfiltered find: {cmd}"
        if name == "delete":
            assert all(d["q"] for d in cmd["deletes"]), f"unfiltered delete: {cmd}"
        if name == "update":
            assert all(u["q"] for u in cmd["updates"]), f"unfiltered update: {cmd}"
    assert not [c for c in listener.commands if c[0] == "createIndexes"], "indexes belong to start-up"


async def test_an_interrupted_write_is_completed_without_orphans(mongo: Mongo) -> None:
    """A crash between the chunks and the files document leaves chunks but no file; the retry cleans up."""
    from bson import Binary, ObjectId

    await mongo.chunks.insert_many(
        [{"_id": ObjectId(), "files_id": "c" * 32, "n": n, "data": Binary(b"old")} for n in range(3)]
    )
    images = GridFsImageStore(mongo)
    assert await images.info("c" * 32) is None
    await images.put("c" * 32, b"new", filename="x", meta=META)

    assert await mongo.chunks.count_documents({"files_id": "c" * 32}) == 1
    assert await read(images, "c" * 32) == b"new"
