"""Webhook signatures, the Standard Webhooks way (https://www.standardwebhooks.com/).

Every delivery carries `webhook-id` (the same on every retry of one notification, so the receiver can
deduplicate), `webhook-timestamp` (unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.

Each upload with a webhook URL gets its own secret (`new_secret`), handed to the uploader once and used to
sign that request's webhooks alone: a receiver can verify its own deliveries, and forge no one else's.

The key: a secret of the form `whsec_<base64>` (the standard's form) is the base64-decoded part after the
prefix. A secret *without* the prefix is used as its raw UTF-8 bytes, so an operator can configure any
passphrase; note that this differs from the reference libraries, which base64-decode unprefixed secrets too.
A request from before per-request secrets is signed with the legacy `IMAGEPIPE_WEBHOOK_SECRET`, or (unset)
sent unsigned, without a `webhook-signature` header.

The notifier signs what it sends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300
SECRET_BYTES = 32  # the standard asks for 24 to 64 random bytes
_MAX_TIMESTAMP_DIGITS = 15  # far beyond any real time; int() of thousands of digits raises


def new_secret() -> str:
    """A fresh signing secret in the standard's form, `whsec_<base64 of SECRET_BYTES random bytes>`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


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
    if not (message_id and signatures and raw_ts.isascii() and raw_ts.isdigit()):
        return False
    if len(raw_ts) > _MAX_TIMESTAMP_DIGITS:
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


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent: compact UTF-8 JSON, datetimes as ISO 8601."""
    return orjson.dumps(payload)
