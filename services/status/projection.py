"""Project image outcomes into the request read model, and announce completion exactly once.

Recording outcomes and counting them happen atomically, keyed by the image (`record_outcomes`): a
redelivered event finds its image already recorded and changes nothing, so counters never double-count.
Recording the last outcome also flips the request to COMPLETED and marks its completion as pending
publication; publishing happens after that, and a sweeper republishes any completion a crash left
unpublished. The completion's event_id is fixed when it is recorded, so a republished RequestCompleted is
recognisably the same one.

A cancelled request (CANCELLING, set by the gateway) settles here too: the sweeper skips, in bulk and in one
write however many there are, every image that was never published; the images that were get their
outcomes from the compressors (ImageSkipped for those not started). The last outcome completes it as
CANCELLED, announced exactly like a completion.

Outcomes of one request that arrive together are recorded together: concurrent transactions on one
request document would only conflict and retry, and batching turns N round trips into a few. Each message
is acknowledged only after the batch holding its outcome has been recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import Histogram

from shared.bus import HandlerMethods, Publisher
from shared.events import Event, ImageCompressed, ImageFailed, ImageSkipped, RequestCompleted
from shared.repository import (
    OutcomeDoc,
    OutcomeStatus,
    RequestPurged,
    RequestRepository,
    RequestStatus,
    UnknownRequest,
)

log = structlog.get_logger()

SWEEP_S = 1.0  # how often unpublished completions are looked for
# How long a request's first waiting outcome waits for others before they are recorded together: each
# transaction costs the database about the same whatever it holds, and outcomes arrive a few ms apart.
GATHER_S = 0.05
COMPLETION_LAG = Histogram(
    "imagepipe_status_completion_lag_seconds",
    "From a request's upload to its completion",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
Outcome = ImageCompressed | ImageFailed | ImageSkipped


class StatusProjection:
    def __init__(self, repo: RequestRepository, publisher: Publisher) -> None:
        self.repo = repo
        self.publisher = publisher
        self._waiting: dict[str, list[tuple[Outcome, asyncio.Future[None]]]] = {}
        self._recording: set[str] = set()  # requests whose recorder task is running
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(self, event: Outcome) -> None:
        """Returns once the outcome is recorded; raises if recording failed (so it is retried)."""
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
            await asyncio.sleep(GATHER_S)
            while batch := self._waiting.pop(request_id, None):
                try:
                    completed = await self.repo.record_outcomes(request_id, [_outcome(e) for e, _ in batch])
                except RequestPurged:  # deleted: its outcomes are done with, and must not recreate it
                    log.info("outcomes_of_deleted_request_dropped", request_id=request_id, count=len(batch))
                    completed = False
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

    async def on_parked(self, event: Event, reason: str) -> None:
        """An outcome given up on still counts, or its request would never complete: the image is recorded
        FAILED with the reason (if it has no outcome yet). A request that does not exist has nothing to
        complete."""
        if not isinstance(event, Outcome):
            return
        why = (
            event.reason
            if isinstance(event, ImageFailed | ImageSkipped)
            else "compressed, but its outcome could not be recorded"
        )
        failed = _outcome(event, failure=f"{why} ({reason})"[:500])
        try:
            completed = await self.repo.record_outcomes(event.request_id, [failed])
        except UnknownRequest:
            log.warning("outcome_of_unknown_request_dropped", index=event.index)
            return
        if completed:
            with contextlib.suppress(Exception):  # recorded as pending: the sweeper publishes it
                await self.publish_completion(event.request_id)

    async def publish_completion(self, request_id: str) -> None:
        request = await self.repo.completion_to_publish(request_id)
        if request is None:
            return
        await self.publisher.publish(
            RequestCompleted(
                event_id=request.get("completion_event_id", ""),
                request_id=request_id,
                total_images=request["total_images"],
                compressed=request["no_img_compressed"],
                failed=request["no_img_failed"],
                status="CANCELLED" if request["status"] == RequestStatus.CANCELLED else "COMPLETED",
                skipped=request.get("no_img_skipped", 0),
            )
        )
        await self.repo.mark_completion_published(request_id)
        # Observed once per completion (published once, barring a crash); a metric never fails a publish.
        if (completed := request.get("completed_at")) is not None and (created := request.get("created_at")):
            COMPLETION_LAG.observe((completed - created).total_seconds())
        log.info(
            "request_completed",
            request_id=request_id,
            status=request["status"],
            failed=request["no_img_failed"],
        )

    async def sweep_unpublished(self, older_than: timedelta = timedelta(seconds=10)) -> int:
        """Publish completions that a crash (or a broker outage) left unpublished. Younger ones are being
        published by their own handler."""
        swept = 0
        async for request_id in self.repo.unpublished_completions(older_than):
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                await self.publish_completion(request_id)
            swept += 1
        return swept

    async def settle_cancellations(self) -> int:
        """Settle the cancels asked for since the last round: skip each request's never-published images
        in bulk, and complete those with nothing left in flight. Returns how many were completed."""
        completed = 0
        async for request_id in self.repo.cancelling_requests():
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                if await self.repo.settle_cancellation(request_id):
                    completed += 1
                    await self.publish_completion(request_id)
        return completed

    async def sweep_forever(self, interval: float = SWEEP_S) -> None:
        while True:
            try:
                await self.settle_cancellations()
                await self.sweep_unpublished()
            except Exception as exc:  # an outage: try again next round
                log.warning("completion_sweep_failed", error=str(exc)[:200])
            await asyncio.sleep(interval)


def _outcome(event: Outcome, failure: str | None = None) -> OutcomeDoc:
    """The image's outcome as the event reports it; FAILED with `failure` as the reason, if given."""
    outcome = OutcomeDoc(
        request_id=event.request_id,
        index=event.index,
        url=event.url,
        status=OutcomeStatus.FAILED,
        at=datetime.now(UTC),
    )
    if failure is not None or isinstance(event, ImageFailed | ImageSkipped):
        outcome["reason"] = failure if failure is not None else getattr(event, "reason", "")
        if failure is None and isinstance(event, ImageSkipped):
            outcome["status"] = OutcomeStatus.SKIPPED
        return outcome
    outcome["status"] = OutcomeStatus.COMPRESSED
    outcome["file_id"] = event.file_id
    outcome["content_type"] = event.content_type
    outcome["input_bytes"] = event.input_bytes
    outcome["output_bytes"] = event.output_bytes
    outcome["kept_original"] = event.kept_original
    for detail in ("width", "height", "quality", "score"):  # None from a compressor predating them
        if (value := getattr(event, detail)) is not None:
            outcome[detail] = value
    return outcome


# Which handler takes which event: the status service's subscriptions.
ROUTES: HandlerMethods = {
    ImageCompressed: StatusProjection.record,
    ImageFailed: StatusProjection.record,
    ImageSkipped: StatusProjection.record,
}
