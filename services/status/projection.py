"""Project image outcomes into the request read model, and announce completion exactly once.

Recording outcomes and counting them happen in one transaction, keyed by the image: a redelivered event
finds its image already recorded and changes nothing, so counters never double-count. The transaction that
records the last outcome also flips the request to COMPLETED and marks its completion as pending
publication; publishing happens after the commit, and a sweeper republishes any completion a crash left
unpublished. The completion's event_id is fixed when it is recorded, so a republished RequestCompleted is
recognisably the same one.

Outcomes of one request that arrive together are recorded together, in one transaction: concurrent
transactions on one request document would only conflict and retry, and batching turns N round trips into
a few. Each message is acknowledged only after the transaction holding its outcome has committed.

A status process killed mid-transaction leaves its transaction open in the database, holding the request
document: every write to that request would wait until the database times it out (60 s by default). The
SessionReaper below aborts such transactions within seconds instead.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

import structlog
from bson import Binary
from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession

from shared.events import Event, ImageCompressed, ImageFailed, RequestCompleted
from shared.storage import Store, UnknownRequest, image_key

log = structlog.get_logger()

PENDING, COMPLETED = "PENDING", "COMPLETED"
FAILURES_KEPT = 100  # failures listed on the request document itself; all of them are in `images`
HEARTBEAT_S = 1.0  # also how often unpublished completions are swept
PRESUMED_DEAD = timedelta(seconds=5)

Outcome = ImageCompressed | ImageFailed


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...


class StatusProjection:
    def __init__(self, store: Store, publisher: Publisher) -> None:
        self.store = store
        self.publisher = publisher
        self._waiting: dict[str, list[tuple[Outcome, asyncio.Future[None]]]] = {}
        self._recording: set[str] = set()  # requests whose recorder task is running
        self._tasks: set[asyncio.Task[None]] = set()
        self.reaper = SessionReaper(store)

    async def handle(self, event: Event) -> None:
        """Returns once the outcome is committed; raises if its transaction failed (so it is retried)."""
        assert isinstance(event, Outcome)
        done = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event.request_id, []).append((event, done))
        if event.request_id not in self._recording:
            self._recording.add(event.request_id)
            task = asyncio.create_task(self._record_while_waiting(event.request_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await done

    async def _record_while_waiting(self, request_id: str) -> None:
        try:
            # Each round takes every outcome that arrived meanwhile; the loop ends, with no await between
            # the empty pop and the discard, when none is waiting.
            while batch := self._waiting.pop(request_id, None):
                events = [event for event, _ in batch]
                try:
                    async with self.store.client.start_session() as session:
                        await self.reaper.register(session)
                        completed = await session.with_transaction(
                            partial(self._record, request_id=request_id, events=events)
                        )
                except Exception as exc:
                    for _, done in batch:
                        if not done.done():  # its handler was cancelled (shutdown, lost channel)
                            done.set_exception(exc)
                    continue
                if completed:
                    try:
                        await self.publish_completion(request_id)
                    except Exception as exc:  # recorded as pending: the sweeper publishes it
                        log.warning("completion_publish_failed", request_id=request_id, error=str(exc)[:200])
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._recording.discard(request_id)

    async def _record(self, session: AsyncClientSession, *, request_id: str, events: list[Outcome]) -> bool:
        """Returns True when these outcomes completed the request."""
        now = datetime.now(UTC)
        recorded = await self.store.images.bulk_write(
            [
                UpdateOne(
                    {"_id": image_key(request_id, e.index)}, {"$setOnInsert": _outcome(e, now)}, upsert=True
                )
                for e in events
            ],
            ordered=False,
            session=session,
        )
        new = [events[i] for i in recorded.upserted_ids or {}]
        if len(new) < len(events):
            log.info("duplicate_outcomes_ignored", count=len(events) - len(new))
        if not new:
            return False

        compressed = [e for e in new if isinstance(e, ImageCompressed)]
        failures = [
            {"index": e.index, "url": e.url, "reason": e.reason} for e in new if isinstance(e, ImageFailed)
        ]
        update: dict[str, Any] = {
            "$inc": {
                "no_img_compressed": len(compressed),
                "no_img_failed": len(failures),
                "bytes_in": sum(e.input_bytes for e in compressed),
                "bytes_out": sum(e.output_bytes for e in compressed),
            }
        }
        if failures:
            update["$push"] = {"failures": {"$each": failures, "$slice": FAILURES_KEPT}}
        # update_one + find_one rather than find_one_and_update: SecantusDB answers the latter by a scan.
        counted = await self.store.requests.update_one({"_id": request_id}, update, session=session)
        if counted.matched_count != 1:
            raise UnknownRequest(f"no request {request_id}")
        request = await self.store.requests.find_one(
            {"_id": request_id},
            projection={"status": 1, "total_images": 1, "no_img_compressed": 1, "no_img_failed": 1},
            session=session,
        )
        assert request is not None
        done = request["no_img_compressed"] + request["no_img_failed"]
        if done < request["total_images"] or request["status"] != PENDING:
            return False
        await self.store.requests.update_one(
            {"_id": request_id, "status": PENDING},
            {
                "$set": {
                    "status": COMPLETED,
                    "completed_at": now,
                    "completion_event_id": uuid.uuid4().hex,
                    "completion_pending": True,
                }
            },
            session=session,
        )
        return True

    async def publish_completion(self, request_id: str) -> None:
        request = await self.store.requests.find_one({"_id": request_id})
        if request is None or not request.get("completion_pending"):
            return
        await self.publisher.publish(
            RequestCompleted(
                event_id=request["completion_event_id"],
                request_id=request_id,
                total_images=request["total_images"],
                compressed=request["no_img_compressed"],
                failed=request["no_img_failed"],
            )
        )
        await self.store.requests.update_one({"_id": request_id}, {"$unset": {"completion_pending": ""}})
        log.info("request_completed", request_id=request_id, failed=request["no_img_failed"])

    async def sweep_unpublished(self, older_than: timedelta = timedelta(seconds=10)) -> int:
        """Publish completions that a crash (or a broker outage) left unpublished."""
        cutoff = datetime.now(UTC) - older_than
        swept = 0
        # Only the indexed flag in the query (SecantusDB scans for anything richer); the age check is ours.
        async for request in self.store.requests.find(
            {"completion_pending": True}, projection={"_id": 1, "completed_at": 1}
        ):
            if request["completed_at"] >= cutoff:
                continue  # just completed: its own handler is publishing it
            with structlog.contextvars.bound_contextvars(request_id=request["_id"]):
                await self.publish_completion(request["_id"])
            swept += 1
        return swept

    async def sweep_forever(self, interval: float = HEARTBEAT_S) -> None:
        while True:
            try:
                await self.reaper.heartbeat_and_reap()
                await self.sweep_unpublished()
            except Exception as exc:  # an outage: try again next round
                log.warning("completion_sweep_failed", error=str(exc)[:200])
            await asyncio.sleep(interval)


def _outcome(event: Outcome, now: datetime) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "request_id": event.request_id,
        "index": event.index,
        "url": event.url,
        "at": now,
    }
    if isinstance(event, ImageCompressed):
        return outcome | {
            "status": "COMPRESSED",
            "file_id": event.file_id,
            "content_type": event.content_type,
            "input_bytes": event.input_bytes,
            "output_bytes": event.output_bytes,
            "kept_original": event.kept_original,
        }
    return outcome | {"status": "FAILED", "reason": event.reason}


class SessionReaper:
    """Aborts the transactions a dead status instance left open.

    Each instance records the ids of the sessions it runs transactions on (the driver reuses a handful)
    and heartbeats; one that has not heartbeaten for PRESUMED_DEAD is taken for dead, and whichever live
    instance notices first (its own restart, typically) kills its sessions, which aborts their transactions.
    Wrongly presuming a paused instance dead costs only a retry: its aborted transaction is run again.
    """

    def __init__(self, store: Store) -> None:
        self.instances = store.db["status_instances"]
        self.admin = store.client.admin
        self.instance = uuid.uuid4().hex
        self._sessions: set[Binary] = set()

    async def register(self, session: AsyncClientSession) -> None:
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
        """Heartbeat, then abort the transactions of instances presumed dead; returns how many there were."""
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
