"""Webhooks signed the Standard Webhooks way (https://www.standardwebhooks.com/).

Every request carries `webhook-id` (the same on every retry of one notification, so the receiver can
deduplicate), `webhook-timestamp` (unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.

The key: a secret of the form `whsec_<base64>` (the standard's form) is the base64-decoded part after the
prefix. A secret *without* the prefix is used as its raw UTF-8 bytes, so an operator can configure any
passphrase; note that this differs from the reference libraries, which base64-decode unprefixed secrets too.
With no secret configured, webhooks are sent unsigned (no `webhook-signature` header): local mode only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from services.notifier.delivery import AttemptOutcome
from shared.netguard import BlockedAddressError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300
_BODY_SNIPPET_BYTES = 200  # enough of an error page to tell what went wrong


def secret_key(secret: str) -> bytes:
    """The HMAC key for a configured secret; ValueError if it is empty or its whsec_ part is not base64."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            # Unpadded secrets are common (padding is optional in the standard's examples): restore it.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("webhook secret: the part after 'whsec_' is not valid base64") from exc
    else:
        key = secret.encode()
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value (`v1,<base64>`) for one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str | None, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    headers = {"webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if secret:
        headers["webhook-signature"] = sign(secret, message_id, timestamp, body)
    return headers


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> bool:
    """True if `headers` carry a valid v1 signature of `body` made within `tolerance_s` of `now`.

    `headers` may be any mapping (aiohttp's, Starlette's or a plain dict with any capitalisation). The
    signature header may hold several space-separated signatures (key rotation); one valid v1 suffices.
    Raises ValueError only for a bad *configured* secret, never for anything the sender controls.
    """
    key = secret_key(secret)
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get("webhook-id", "")
    raw_ts = lowered.get("webhook-timestamp", "").strip()
    signatures = lowered.get("webhook-signature", "")
    if not (message_id and raw_ts.isascii() and raw_ts.isdigit() and signatures):
        return False
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:  # too old (replay) or too far in the future
        return False
    payload = body.encode() if isinstance(body, str) else body
    expected = hmac.new(key, f"{message_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return True
    return False


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent: compact JSON, datetimes as ISO 8601."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


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
            status = resp.status
            if 200 <= status < 300:
                return AttemptOutcome(ok=True, status=status, detail=f"HTTP {status}")
            if 300 <= status < 400:
                location = resp.headers.get("location", "?")
                return AttemptOutcome(
                    ok=False,
                    retryable=False,
                    status=status,
                    detail=f"HTTP {status}: redirect to {location[:200]} not followed; "
                    "configure the final URL",
                )
            snippet = (await resp.content.read(_BODY_SNIPPET_BYTES)).decode("utf-8", "replace")
            detail = f"HTTP {status} {resp.reason or ''}".rstrip()
            if snippet.strip():
                detail += f": {' '.join(snippet.split())}"
            retryable = _is_retryable_status(status)
            return AttemptOutcome(
                ok=False,
                retryable=retryable,
                status=status,
                detail=detail,
                retry_after=parse_retry_after(resp.headers.get("retry-after")) if retryable else None,
            )
    except TimeoutError:  # aiohttp's timeouts subclass it
        return AttemptOutcome(ok=False, retryable=True, detail=f"timed out after {timeout:g} s")
    except BlockedAddressError as exc:  # the SSRF guard refused where the URL points: final
        return AttemptOutcome(ok=False, retryable=False, detail=str(exc))
    except (aiohttp.InvalidURL, aiohttp.ClientConnectorCertificateError) as exc:
        # Retrying won't fix a malformed URL or a receiver's bad certificate.
        return AttemptOutcome(ok=False, retryable=False, detail=f"{type(exc).__name__}: {exc}")
    except (aiohttp.ClientError, OSError) as exc:
        return AttemptOutcome(ok=False, retryable=True, detail=f"{type(exc).__name__}: {exc}")
