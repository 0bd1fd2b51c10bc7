"""MongoDB, adapted: the connection, the collections and their indexes, transactions, and the driver's errors.

Only `shared/` talks to the driver. The repositories built on this (`repository.py`, `files.py`) raise
`StorageUnavailable` when the database cannot be reached and `StorageError` for anything else it refuses,
so services catch our errors, never PyMongo's.

The database's rules, written once (they hold for MongoDB, and are what SecantusDB, the local-mode server,
needs to stay fast):

* Every hot query is served by an index. SecantusDB uses an index only for an equality prefix, optionally
  followed by a range on the next field; anything else, a range on `_id` alone included, scans the whole
  collection. So per-request documents carry `request_id` and their position under a compound index, flags
  are queried by equality alone, and the application checks anything richer on the documents it gets.
* No find_one_and_update: SecantusDB answers it by a scan. An update_one, then a find_one by `_id`.
* No retryable writes locally (`retryWrites=false` in the local URL): SecantusDB scans its record of them on
  every write, so each write would cost more as a long run goes on. Our writes are idempotent and retried.
* A process killed mid-transaction leaves its transaction open, holding its documents, until the server
  times it out (60 s by default). `SessionReaper` aborts such transactions within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pymongo
import structlog
from bson import Binary
from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

from shared.errors import Unavailable
from shared.settings import Settings

log = structlog.get_logger()

Doc = dict[str, Any]
Session = AsyncClientSession
T = TypeVar("T")
C = TypeVar("C", bound=type)

DUPLICATE_KEY = 11000
PRESUMED_DEAD = timedelta(seconds=5)  # a transaction runner silent this long has its transactions aborted
HEARTBEAT_S = 1.0


class StorageError(Exception):
    """The database refused an operation (a bug, a constraint, a document too large)."""


class StorageUnavailable(StorageError, Unavailable):
    """The database cannot be reached or did not answer in time: trying again later may succeed."""


# Server error codes that mean "not now" (a server starting, stopping, stepping down or timing out), from
# the drivers' list of retryable errors; with retryable writes off, the server does not label them.
_UNAVAILABLE_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
_UNAVAILABLE_LABELS = ("TransientTransactionError", "UnknownTransactionCommitResult", "RetryableWriteError")


def _translated(exc: Exception) -> StorageError:
    transient = isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError) or (
        isinstance(exc, PyMongoError)
        and (
            exc.timeout
            or any(exc.has_error_label(label) for label in _UNAVAILABLE_LABELS)
            or getattr(exc, "code", None) in _UNAVAILABLE_CODES
        )
    )
    cls = StorageUnavailable if transient else StorageError
    return cls(f"{type(exc).__name__}: {exc}"[:500])


@contextlib.contextmanager
def driver_errors() -> Iterator[None]:
    """Turn the driver's exceptions into ours. DocumentTooLarge is an InvalidDocument, not a PyMongoError."""
    try:
        yield
    except (PyMongoError, InvalidDocument) as exc:
        raise _translated(exc) from exc


def adapts_driver_errors(cls: C) -> C:
    """Class decorator: every public coroutine and async generator of `cls` raises our errors only."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if inspect.iscoroutinefunction(member):
            setattr(cls, name, _wrap_coroutine(member))
        elif inspect.isasyncgenfunction(member):
            setattr(cls, name, _wrap_generator(member))
    return cls


def _wrap_coroutine(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        with driver_errors():
            return await method(*args, **kwargs)

    return wrapped


def _wrap_generator(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(method)
    async def wrapped(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        with driver_errors():
            async for item in method(*args, **kwargs):
                yield item

    return wrapped


@dataclass
class Mongo:
    """The database handle: its collections, indexes and transactions. Repositories are built on it."""

    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]
    reaper: SessionReaper = field(init=False)
    _heartbeat: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.reaper = SessionReaper(self)

    # The read model (see repository.py) and the image files (files.py, in GridFS layout).
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
    def idempotency_keys(self) -> AsyncCollection[Doc]:
        return self.db["idempotency_keys"]

    @property
    def purges(self) -> AsyncCollection[Doc]:
        return self.db["purges"]

    @property
    def files(self) -> AsyncCollection[Doc]:
        return self.db["fs.files"]

    @property
    def chunks(self) -> AsyncCollection[Doc]:
        return self.db["fs.chunks"]

    async def ensure_indexes(self) -> None:
        with driver_errors():
            # GridFS's own indexes, created once here instead of probed on every upload (see files.py).
            await self.files.create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
            await self.chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
            # A request's images, found to delete them with it.
            await self.files.create_index("metadata.request_id")
            # A request's rows and outcomes are read in order: an equality prefix and a range.
            await self.rows.create_index([("request_id", ASCENDING), ("chunk", ASCENDING)])
            await self.images.create_index([("request_id", ASCENDING), ("index", ASCENDING)])
            # Delivery bookkeeping: sparse flags, present only while there is something left to publish.
            await self.requests.create_index("outbox_pending", sparse=True)
            await self.requests.create_index("completion_pending", sparse=True)
            # Uploads not yet accepted (RECEIVING), looked for by the gateway's janitor; cancels to settle.
            await self.requests.create_index("status")
            # GET /requests: one owner's, newest first (`owner` is stored on every request, null too).
            await self.requests.create_index(
                [("owner", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)]
            )
            # Idempotency keys expire by TTL (SecantusDB honours TTL indexes too, within about a minute);
            # until the server removes one, the repository treats it as gone (claim_idempotency_key).
            await self.idempotency_keys.create_index("expires_at", expireAfterSeconds=0)
            # Retention: final requests by age (only they have completed_at); purges under way by age.
            await self.requests.create_index("completed_at", sparse=True)
            await self.purges.create_index("at")

    async def ping(self) -> bool:
        """For readiness probes: answers within a second, whatever the database does."""
        try:
            with pymongo.timeout(1.0):
                await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def transaction(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """Run `work(session)` in a transaction, retried by the driver on transient conflicts."""
        if self._heartbeat is None:  # the first transaction of this process: keep its sessions reapable
            self._heartbeat = asyncio.create_task(self._heartbeat_forever(), name="session-reaper")
        with driver_errors():
            async with self.client.start_session() as session:
                await self.reaper.register(session)
                return await session.with_transaction(work)

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self.reaper.heartbeat_and_reap()
            except PyMongoError as exc:  # an outage: try again next round
                log.warning("session_reaper_failed", error=str(exc)[:200])
            await asyncio.sleep(HEARTBEAT_S)

    async def drop(self, within: float = 30.0) -> bool:
        """Drop the whole database (tests and benchmarks clean up after themselves with it); False if it
        could not be done within `within` seconds. Clean-up must never hang a run: SecantusDB can spin on
        an insert that a killed client left running, and a drop then waits for it."""
        try:
            with pymongo.timeout(within):
                await self.client.drop_database(self.db.name)
        except PyMongoError as exc:
            log.warning("database_not_dropped", database=self.db.name, error=str(exc)[:200])
            return False
        return True

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self.client.close()


class SessionReaper:
    """Aborts the transactions a dead process left open.

    Each process records the ids of the sessions it runs transactions on (the driver reuses a handful) and
    heartbeats; one that has not heartbeaten for PRESUMED_DEAD is taken for dead, and whichever live
    process notices first (its own restart, typically) kills its sessions, which aborts their transactions.
    Wrongly presuming a paused process dead costs only a retry: its aborted transaction is run again.
    With MongoDB auth, this needs the killSessions privilege.
    """

    def __init__(self, mongo: Mongo) -> None:
        self.instances = mongo.db["transaction_runners"]
        self.admin = mongo.client.admin
        self.instance = uuid.uuid4().hex
        self._sessions: set[Binary] = set()

    async def register(self, session: Session) -> None:
        """Record a session's id before its first transaction."""
        lsid: Binary = session.session_id["id"]
        if lsid not in self._sessions:
            await self.instances.update_one(
                {"_id": self.instance},
                {"$addToSet": {"sessions": lsid}, "$setOnInsert": {"seen": datetime.now(UTC)}},
                upsert=True,
            )
            self._sessions.add(lsid)

    async def heartbeat_and_reap(self) -> int:
        """Heartbeat, then abort the transactions of processes presumed dead; returns how many there were."""
        now = datetime.now(UTC)
        await self.instances.update_one(
            {"_id": self.instance},
            # Re-adding our sessions restores them if we were presumed dead during a long pause.
            {"$set": {"seen": now}, "$addToSet": {"sessions": {"$each": list(self._sessions)}}},
            upsert=True,
        )
        reaped = 0
        async for dead in self.instances.find({"seen": {"$lt": now - PRESUMED_DEAD}}):
            sessions = [{"id": lsid} for lsid in dead.get("sessions", [])]
            if sessions:
                await self.admin.command("killSessions", sessions)
            await self.instances.delete_one({"_id": dead["_id"], "seen": dead["seen"]})
            log.warning("dead_instance_sessions_killed", instance=dead["_id"], sessions=len(sessions))
            reaped += 1
        return reaped


def connect_mongo(settings: Settings) -> Mongo:
    if not settings.mongo_url:
        raise RuntimeError("IMAGEPIPE_MONGO_URL is not set (make run sets it when it starts SecantusDB)")
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=5_000
    )
    return Mongo(client=client, db=client[settings.mongo_db])
