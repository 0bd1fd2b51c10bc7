"""Tell the uploader their request is done: email with the output CSV, and a signed webhook if they gave one.

Each notification is keyed by the id of the event that asked for it, and each of its channels is claimed
(a conditional update) before it is sent: of any number of copies of one event running at once, one
sends and the others wait (`ClaimHeld`: the bus retries them) until it has a result, which they then find
and skip. A claim lapses (`claim_lease`) after longer than a whole delivery with its retries, so a notifier
that dies mid-send delays its notification but does not lose it. (A death after the receiver took the
message but before its result was recorded means it is sent again, with the same Message-ID and
webhook-id, for the receiver to recognise; a database that fails just then only delays the record.) An explicit NotificationRequested has its own id, and so sends
the email again. Every attempt is recorded on the request.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from prometheus_client import Counter

from services.notifier.delivery import AttemptRecord, deliver_with_retry
from services.notifier.mailer import Attachment, Mailer, attempt_email, build_completion_email
from services.notifier.webhook import Webhooks
from shared.bus import HandlerMethods
from shared.errors import ClaimHeld
from shared.events import Event, NotificationRequested, RequestCompleted
from shared.links import Links
from shared.output_csv import output_csv
from shared.repository import AttemptDoc, Claim, RequestDoc, RequestRepository, UnknownRequest
from shared.retry import MAX_DELAY_S
from shared.settings import Settings

log = structlog.get_logger()

Notice = RequestCompleted | NotificationRequested
NOTIFICATIONS = Counter(
    "imagepipe_notifier_notifications_total",
    "Notifications finished, by channel and outcome",
    ["channel", "outcome"],
)
ATTEMPTS = Counter(
    "imagepipe_notifier_delivery_attempts_total",
    "Delivery attempts, by channel and outcome",
    ["channel", "outcome"],
)
Send = Callable[[RequestDoc, str, dict[str, Any]], Awaitable[None]]


def claim_lease(settings: Settings) -> timedelta:
    """Longer than the slowest whole delivery: every attempt timing out, with the longest wait between."""
    return timedelta(seconds=settings.notify_attempts * (settings.notify_timeout + MAX_DELAY_S) + 30)


class Notifier:
    def __init__(
        self, repo: RequestRepository, mailer: Mailer, webhooks: Webhooks, settings: Settings
    ) -> None:
        self.repo = repo
        self.mailer = mailer
        self.webhooks = webhooks
        self.settings = settings
        self.links = Links(settings.base_url)
        self.owner = uuid.uuid4().hex  # this notifier's name on the claims it holds
        self.lease = claim_lease(settings)
        self._legacy_secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        # Channels this process sent whose result it could not record yet (the database failed just then):
        # their redelivery records the result instead of sending again.
        self._unrecorded: dict[tuple[str, str, str], bool] = {}

    async def notify(self, event: Notice) -> None:
        request = await self.repo.get(event.request_id, notifications=False)
        if request is None:
            if await self.repo.was_purged(event.request_id):  # deleted: nobody is to be told any more
                log.info("notification_of_deleted_request_dropped", request_id=event.request_id)
                return
            raise UnknownRequest(f"no request {event.request_id}")
        key = event.event_id
        summary = self._summary(request)
        held = []
        for channel, send in self._channels(event, request).items():
            sent = self._unrecorded.get((request["_id"], key, channel))
            if sent is not None:
                await self._mark(request["_id"], key, channel, sent)
                continue
            claim = await self.repo.claim_notification(request["_id"], key, channel, self.owner, self.lease)
            if claim is Claim.CLAIMED:
                await send(request, key, summary)
            elif claim is Claim.HELD:
                held.append(channel)
        if held:
            raise ClaimHeld(f"another copy of notification {key} is sending its {' and '.join(held)}")

    async def on_parked(self, event: Event, reason: str) -> None:
        """Given up on: each channel without a result is marked failed, with the reason, so the request
        shows what became of its notification."""
        if not isinstance(event, Notice):
            return
        request = await self.repo.get(event.request_id, notifications=False)
        if request is None:
            return  # no request, nothing to tell
        done = request.get("notified", {}).get(event.event_id, {})
        for channel in self._channels(event, request):
            if channel not in done:
                await self._recorder(request["_id"], event.event_id, channel)(given_up(reason))
                await self._mark(request["_id"], event.event_id, channel, False)

    def _channels(self, event: Notice, request: RequestDoc) -> dict[str, Send]:
        """The channels this notification goes out on: the email always, the webhook on completion."""
        channels: dict[str, Send] = {"email": self._email}
        if isinstance(event, RequestCompleted) and request.get("webhook_url"):
            channels["webhook"] = self._webhook
        return channels

    async def _email(self, request: RequestDoc, key: str, summary: dict[str, Any]) -> None:
        message = build_completion_email(
            to=request["email"],
            sender=self.settings.mail_from,
            request_id=request["_id"],
            summary=summary,
            attachment=await self._attachment(request),
            message_id=key,
        )
        sent = await deliver_with_retry(
            lambda: attempt_email(self.mailer, message),
            attempts=self.settings.notify_attempts,
            backoff=self.settings.notify_backoff,
            record=self._recorder(request["_id"], key, "email"),
        )
        await self._mark(request["_id"], key, "email", sent)

    async def _attachment(self, request: RequestDoc) -> Attachment:
        """The output CSV, or why it is linked instead: read no further than the limit allows."""
        limit = self.settings.mail_attach_max_bytes
        parts, size = [], 0
        async for part in output_csv(self.repo, request, self.links):
            size += len(part)
            if size > limit:
                return Attachment(csv_bytes=None, link=self.links.output(request["_id"]), limit=limit)
            parts.append(part)
        return Attachment(csv_bytes=b"".join(parts), link=self.links.output(request["_id"]), limit=limit)

    async def _webhook(self, request: RequestDoc, key: str, summary: dict[str, Any]) -> None:
        url = request["webhook_url"]
        assert url is not None
        payload = {"type": "request.completed", "timestamp": datetime.now(UTC).isoformat(), "data": summary}
        # The request's own secret; a request from before those has none: the legacy global one, if set.
        secret = request.get("webhook_secret") or self._legacy_secret
        delivered = await deliver_with_retry(
            lambda: self.webhooks.post(url, payload, message_id=key, secret=secret),
            attempts=self.settings.notify_attempts,
            backoff=self.settings.notify_backoff,
            record=self._recorder(request["_id"], key, "webhook"),
        )
        await self._mark(request["_id"], key, "webhook", delivered)

    def _summary(self, request: RequestDoc) -> dict[str, Any]:
        return {
            "request_id": request["_id"],
            "status": request["status"],
            "total_images": request["total_images"],
            "compressed": request["no_img_compressed"],
            "failed": request["no_img_failed"],
            "skipped": request.get("no_img_skipped", 0),
            "failures": request.get("failures", []),
            "status_url": self.links.status(request["_id"]),
            "output_csv_url": self.links.output(request["_id"]),
            "options": request.get("options", {}),
        }

    def _recorder(
        self, request_id: str, key: str, channel: str
    ) -> Callable[[AttemptRecord], Awaitable[None]]:
        async def record(attempt: AttemptRecord) -> None:
            entry = cast(AttemptDoc, {"channel": channel, "notification_id": key, **attempt.as_dict()})
            await self.repo.record_attempt(request_id, entry)
            if attempt.attempt > 0:  # 0: the record of one never made (given up)
                ATTEMPTS.labels(channel, attempt.outcome).inc()

        return record

    async def _mark(self, request_id: str, key: str, channel: str, ok: bool) -> None:
        self._unrecorded[(request_id, key, channel)] = ok
        await self.repo.mark_notified(request_id, key, channel, ok)
        del self._unrecorded[(request_id, key, channel)]
        NOTIFICATIONS.labels(channel, "delivered" if ok else "failed").inc()
        log.info("notification_finished", channel=channel, ok=ok, notification_id=key)


def given_up(reason: str) -> AttemptRecord:
    return AttemptRecord(
        attempt=0,
        started_at=datetime.now(UTC),
        outcome="permanent",
        status=None,
        detail=f"not sent: {reason}"[:500],
        duration_s=0.0,
        next_delay_s=None,
    )


# Which handler takes which event: the notifier's subscriptions.
ROUTES: HandlerMethods = {RequestCompleted: Notifier.notify, NotificationRequested: Notifier.notify}
