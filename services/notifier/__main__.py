"""Notifier service: emails the output CSV and calls the uploader's webhook when a request completes."""

from __future__ import annotations

import asyncio

from services.notifier.handler import ROUTES, Notifier
from services.notifier.mailer import mailer_from_settings
from services.notifier.webhook import HttpWebhooks
from shared.bus import bind
from shared.netguard import guarded_session
from shared.runtime import Runtime, run_service


async def start(rt: Runtime) -> None:
    s = rt.settings
    # Webhook URLs are the uploader's: as untrusted as image URLs, so the same address guard applies.
    http = guarded_session(
        allow_private=s.fetch_allow_private,
        connect_timeout=s.fetch_connect_timeout,
        read_timeout=s.notify_timeout,
        total_timeout=s.notify_timeout,
    )
    rt.on_close.append(http.close)
    notifier = Notifier(rt.repo, mailer_from_settings(s), HttpWebhooks(http, s.notify_timeout), s)
    await rt.bus.subscribe("notifier", bind(ROUTES, notifier), prefetch=16, on_parked=notifier.on_parked)


if __name__ == "__main__":
    asyncio.run(run_service("notifier", start))
