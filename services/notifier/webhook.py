"""Deliver one webhook: POST the signed JSON summary to the uploader's URL and say how it went."""

from __future__ import annotations

import time
from typing import Any, Protocol

import aiohttp

from services.notifier.delivery import AttemptOutcome
from shared.netguard import BlockedAddressError
from shared.retry import parse_retry_after, retryable_status
from shared.webhooks import encode_payload, signed_headers

_BODY_SNIPPET_BYTES = 200  # enough of an error page to tell what went wrong


class Webhooks(Protocol):
    async def post(
        self, url: str, payload: dict[str, Any], *, message_id: str, secret: str | None
    ) -> AttemptOutcome: ...


class HttpWebhooks:
    """Webhooks sent through one (SSRF-guarded) HTTP session, each signed with its request's secret."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self.session, self.timeout = session, timeout

    async def post(
        self, url: str, payload: dict[str, Any], *, message_id: str, secret: str | None
    ) -> AttemptOutcome:
        return await post_webhook(
            self.session, url, payload, message_id=message_id, secret=secret, timeout=self.timeout
        )


async def post_webhook(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    *,
    message_id: str,
    secret: str | None,
    timeout: float,  # noqa: ASYNC109 - the per-request HTTP timeout, handed to aiohttp
) -> AttemptOutcome:
    """POST `payload` once. Never raises for network or HTTP trouble: the outcome says what happened.

    Redirects are not followed (the SSRF guard vets the configured URL, not wherever it points us next),
    so a 3xx is a permanent failure.
    """
    body = encode_payload(payload)
    headers = {
        "content-type": "application/json",
        "user-agent": "imagepipe-notifier",
        **signed_headers(secret, message_id, int(time.time()), body),
    }
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return await _outcome(resp)
    except TimeoutError:  # aiohttp's timeouts subclass it
        return AttemptOutcome(ok=False, retryable=True, detail=f"timed out after {timeout:g} s")
    except BlockedAddressError as exc:  # the SSRF guard refused where the URL points: final
        return AttemptOutcome(ok=False, retryable=False, detail=exc.public_reason)
    except (aiohttp.InvalidURL, aiohttp.ClientConnectorCertificateError) as exc:
        # Retrying won't fix a malformed URL or a receiver's bad certificate.
        return AttemptOutcome(ok=False, retryable=False, detail=f"{type(exc).__name__}: {exc}")
    except (aiohttp.ClientError, OSError) as exc:
        return AttemptOutcome(ok=False, retryable=True, detail=f"{type(exc).__name__}: {exc}")


async def _outcome(resp: aiohttp.ClientResponse) -> AttemptOutcome:
    status = resp.status
    if 200 <= status < 300:
        return AttemptOutcome(ok=True, status=status, detail=f"HTTP {status}")
    if 300 <= status < 400:
        location = resp.headers.get("location", "?")
        return AttemptOutcome(
            ok=False,
            retryable=False,
            status=status,
            detail=f"HTTP {status}: redirect to {location[:200]} not followed; configure the final URL",
        )
    snippet = (await resp.content.read(_BODY_SNIPPET_BYTES)).decode("utf-8", "replace")
    detail = f"HTTP {status} {resp.reason or ''}".rstrip()
    if snippet.strip():
        detail += f": {' '.join(snippet.split())}"
    retryable = retryable_status(status)
    return AttemptOutcome(
        ok=False,
        retryable=retryable,
        status=status,
        detail=detail,
        retry_after=parse_retry_after(resp.headers.get("retry-after")) if retryable else None,
    )
