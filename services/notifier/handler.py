"""Tell the uploader their request is done: email with the output CSV, and a signed webhook if they gave one.

Each notification is keyed by the id of the event that asked for it. A channel that already succeeded (or
finally failed) for that key is not tried again, so a redelivered RequestCompleted sends nothing twice;
an explicit NotificationRequested has its own id, and so sends the email again. Every attempt is recorded
on the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import structlog

from services.notifier.delivery import AttemptRecord, deliver_with_retry
from services.notifier.mailer import Mailer, attempt_email, build_completion_email
from services.notifier.webhook import Webhooks
from shared.bus import HandlerMethods
from shared.events import NotificationRequested, RequestCompleted
from shared.links import Links
from shared.output_csv import output_csv
from shared.repository import AttemptDoc, RequestDoc, RequestRepository, UnknownRequest
from shared.settings import Settings

log = structlog.get_logger()


class Notifier:
    def __init__(
        self, repo: RequestRepository, mailer: Mailer, webhooks: Webhooks, settings: Settings
    ) -> None:
        self.repo = repo
        self.mailer = mailer
        self.webhooks = webhooks
        self.settings = settings
        self.links = Links(settings.base_url)

    async def notify(self, event: RequestCompleted | NotificationRequested) -> None:
        request = await self.repo.get(event.request_id, notifications=False)
        if request is None:
            raise UnknownRequest(f"no request {event.request_id}")
        key = event.event_id
        done: dict[str, str] = request.get("notified", {}).get(key, {})
        summary = self._summary(request)
        if "email" not in done:
            await self._email(request, key, summary)
        if isinstance(event, RequestCompleted) and request.get("webhook_url") and "webhook" not in done:
            await self._webhook(request, key, summary)

    async def _email(self, request: RequestDoc, key: str, summary: dict[str, Any]) -> None:
        csv_bytes = b"".join([part async for part in output_csv(self.repo, request, self.links)])
        message = build_completion_email(
            to=request["email"],
            sender=self.settings.mail_from,
            request_id=request["_id"],
            summary=summary,
            csv_bytes=csv_bytes,
            message_id=key,
        )
        sent = await deliver_with_retry(
            lambda: attempt_email(self.mailer, message),
            attempts=self.settings.notify_attempts,
            backoff=self.settings.notify_backoff,
            record=self._recorder(request["_id"], key, "email"),
        )
        await self._mark(request["_id"], key, "email", sent)

    async def _webhook(self, request: RequestDoc, key: str, summary: dict[str, Any]) -> None:
        url = request["webhook_url"]
        assert url is not None
        payload = {"type": "request.completed", "timestamp": datetime.now(UTC).isoformat(), "data": summary}
        delivered = await deliver_with_retry(
            lambda: self.webhooks.post(url, payload, message_id=key),
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

        return record

    async def _mark(self, request_id: str, key: str, channel: str, ok: bool) -> None:
        await self.repo.mark_notified(request_id, key, channel, ok)
        log.info("notification_finished", channel=channel, ok=ok, notification_id=key)


# Which handler takes which event: the notifier's subscriptions.
ROUTES: HandlerMethods = {RequestCompleted: Notifier.notify, NotificationRequested: Notifier.notify}
