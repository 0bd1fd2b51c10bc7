"""Tell the uploader their request is done: email with the output CSV, and a signed webhook if they gave one.

Each notification is keyed by the id of the event that asked for it. A channel that already succeeded (or
finally failed) for that key is not tried again, so a redelivered RequestCompleted sends nothing twice;
an explicit NotificationRequested has its own id, and so sends the email again. Every attempt is recorded
on the request document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from services.notifier.delivery import AttemptRecord, deliver_with_retry
from services.notifier.mailer import Mailer, attempt_email, build_completion_email
from services.notifier.webhook import post_webhook
from shared.events import Event, NotificationRequested, RequestCompleted
from shared.read_model import output_csv_bytes
from shared.settings import Settings
from shared.storage import Store, UnknownRequest

log = structlog.get_logger()

ATTEMPTS_KEPT = 200


class Notifier:
    def __init__(self, store: Store, mailer: Mailer, http: aiohttp.ClientSession, settings: Settings) -> None:
        self.store = store
        self.mailer = mailer
        self.http = http
        self.settings = settings

    async def handle(self, event: Event) -> None:
        assert isinstance(event, RequestCompleted | NotificationRequested)
        request = await self.store.requests.find_one(
            {"_id": event.request_id}, projection={"notifications": 0}
        )
        if request is None:
            raise UnknownRequest(f"no request {event.request_id}")
        key = event.event_id
        done: dict[str, str] = request.get("notified", {}).get(key, {})
        summary = self._summary(request)
        if "email" not in done:
            await self._email(request, key, summary)
        if isinstance(event, RequestCompleted) and request.get("webhook_url") and "webhook" not in done:
            await self._webhook(request, key, summary)

    async def _email(self, request: dict[str, Any], key: str, summary: dict[str, Any]) -> None:
        csv_bytes = await output_csv_bytes(
            self.store, request["_id"], request["columns"], self.settings.base_url
        )
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

    async def _webhook(self, request: dict[str, Any], key: str, summary: dict[str, Any]) -> None:
        payload = {"type": "request.completed", "timestamp": datetime.now(UTC).isoformat(), "data": summary}
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
        delivered = await deliver_with_retry(
            lambda: post_webhook(
                self.http,
                request["webhook_url"],
                payload,
                message_id=key,
                secret=secret,
                timeout=self.settings.notify_timeout,
            ),
            attempts=self.settings.notify_attempts,
            backoff=self.settings.notify_backoff,
            record=self._recorder(request["_id"], key, "webhook"),
        )
        await self._mark(request["_id"], key, "webhook", delivered)

    def _summary(self, request: dict[str, Any]) -> dict[str, Any]:
        base = self.settings.base_url
        return {
            "request_id": request["_id"],
            "status": request["status"],
            "total_images": request["total_images"],
            "compressed": request["no_img_compressed"],
            "failed": request["no_img_failed"],
            "failures": request.get("failures", []),
            "status_url": f"{base}/status/{request['_id']}",
            "output_csv_url": f"{base}/output/{request['_id']}",
        }

    def _recorder(
        self, request_id: str, key: str, channel: str
    ) -> Callable[[AttemptRecord], Awaitable[None]]:
        async def record(attempt: AttemptRecord) -> None:
            entry = {"channel": channel, "notification_id": key, **attempt.as_dict()}
            await self.store.requests.update_one(
                {"_id": request_id},
                {"$push": {"notifications": {"$each": [entry], "$slice": -ATTEMPTS_KEPT}}},
            )

        return record

    async def _mark(self, request_id: str, key: str, channel: str, ok: bool) -> None:
        await self.store.requests.update_one(
            {"_id": request_id}, {"$set": {f"notified.{key}.{channel}": "sent" if ok else "failed"}}
        )
        log.info("notification_finished", channel=channel, ok=ok, notification_id=key)
