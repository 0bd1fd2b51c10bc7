"""Standard Webhooks signing and verification: pure functions, no network."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from shared.retry import parse_retry_after
from shared.webhooks import encode_payload, secret_key, sign, signed_headers, verify

# The test vector of the Standard Webhooks reference libraries (libraries/python/tests, test_sign_function).
REF_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REF_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
REF_TS = 1614265330
REF_BODY = b'{"test": 2432232314}'
REF_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def ref_headers(**override: str) -> dict[str, str]:
    headers = {"webhook-id": REF_ID, "webhook-timestamp": str(REF_TS), "webhook-signature": REF_SIGNATURE}
    headers.update(override)
    return headers


def test_signature_matches_reference_vector() -> None:
    assert sign(REF_SECRET, REF_ID, REF_TS, REF_BODY) == REF_SIGNATURE


def test_signed_headers_carry_id_timestamp_and_signature() -> None:
    assert signed_headers(REF_SECRET, REF_ID, REF_TS, REF_BODY) == ref_headers()


def test_no_secret_means_unsigned() -> None:
    headers = signed_headers(None, REF_ID, REF_TS, REF_BODY)
    assert headers == {"webhook-id": REF_ID, "webhook-timestamp": str(REF_TS)}


def test_verify_accepts_reference_vector_within_tolerance() -> None:
    assert verify(REF_SECRET, ref_headers(), REF_BODY, now=REF_TS)
    assert verify(REF_SECRET, ref_headers(), REF_BODY.decode(), now=REF_TS + 299)
    assert verify(REF_SECRET, ref_headers(), REF_BODY, now=REF_TS - 299)


def test_verify_is_case_insensitive_about_header_names() -> None:
    headers = {k.title(): v for k, v in ref_headers().items()}
    assert verify(REF_SECRET, headers, REF_BODY, now=REF_TS)


def test_verify_rejects_tampered_body() -> None:
    assert not verify(REF_SECRET, ref_headers(), b'{"test": 2432232315}', now=REF_TS)
    assert not verify(REF_SECRET, ref_headers(), REF_BODY + b" ", now=REF_TS)


def test_verify_rejects_tampered_id_or_timestamp() -> None:
    assert not verify(REF_SECRET, ref_headers(**{"webhook-id": "msg_other"}), REF_BODY, now=REF_TS)
    assert not verify(REF_SECRET, ref_headers(**{"webhook-timestamp": str(REF_TS + 1)}), REF_BODY, now=REF_TS)


def test_verify_rejects_old_and_future_timestamps() -> None:
    assert not verify(REF_SECRET, ref_headers(), REF_BODY, now=REF_TS + 301)
    assert not verify(REF_SECRET, ref_headers(), REF_BODY, now=REF_TS - 301)
    assert not verify(REF_SECRET, ref_headers(), REF_BODY, tolerance_s=10, now=REF_TS + 11)
    # Without `now` the real clock applies: a 2021 timestamp is far too old.
    assert not verify(REF_SECRET, ref_headers(), REF_BODY)


def test_verify_rejects_wrong_secret() -> None:
    other = "whsec_" + base64.b64encode(b"another key entirely").decode()
    assert not verify(other, ref_headers(), REF_BODY, now=REF_TS)


def test_verify_accepts_one_valid_signature_among_several() -> None:
    bogus = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    header = f"{bogus} v2,{REF_SIGNATURE[3:]} {REF_SIGNATURE}"
    assert verify(REF_SECRET, ref_headers(**{"webhook-signature": header}), REF_BODY, now=REF_TS)
    # The right bytes under another version tag do not count.
    only_v2 = f"v2,{REF_SIGNATURE[3:]}"
    assert not verify(REF_SECRET, ref_headers(**{"webhook-signature": only_v2}), REF_BODY, now=REF_TS)


@pytest.mark.parametrize(
    "override",
    [
        {"webhook-signature": "v1,not base64!!"},
        {"webhook-signature": "garbage"},
        {"webhook-signature": ""},
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": "\u00b2"},  # a digit to str.isdigit, not to int()
        {"webhook-timestamp": "9" * 5000},  # int() refuses strings of more than 4300 digits
        {"webhook-timestamp": "\u0661\u0662\u0663"},  # Arabic-Indic digits
        {"webhook-timestamp": ""},
        {"webhook-id": ""},
    ],
)
def test_verify_rejects_malformed_headers(override: dict[str, str]) -> None:
    assert not verify(REF_SECRET, ref_headers(**override), REF_BODY, now=REF_TS)


def test_verify_rejects_missing_headers() -> None:
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = ref_headers()
        del headers[name]
        assert not verify(REF_SECRET, headers, REF_BODY, now=REF_TS)


def test_unprefixed_secret_is_used_as_raw_utf8_bytes() -> None:
    secret = "correct horse battery staple"
    digest = hmac.new(secret.encode(), f"{REF_ID}.{REF_TS}.".encode() + REF_BODY, hashlib.sha256).digest()
    assert secret_key(secret) == secret.encode()
    assert sign(secret, REF_ID, REF_TS, REF_BODY) == "v1," + base64.b64encode(digest).decode()
    assert sign(secret, REF_ID, REF_TS, REF_BODY) != REF_SIGNATURE


def test_whsec_secret_without_padding_is_accepted() -> None:
    key = b"sixteen byte key!"  # 17 bytes: its base64 ends in padding
    padded = base64.b64encode(key).decode()
    assert padded.endswith("=")
    assert secret_key("whsec_" + padded.rstrip("=")) == key


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_***not-base64***"])
def test_bad_configured_secret_is_an_error(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)
    with pytest.raises(ValueError):
        verify(secret, ref_headers(), REF_BODY, now=REF_TS)


def test_encoded_payload_is_compact_json_with_iso_datetimes() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert (
        encode_payload({"a": 1, "at": when, "s": "é"})
        == '{"a":1,"at":"2024-05-01T12:00:00+00:00","s":"é"}'.encode()
    )
    with pytest.raises(TypeError):
        encode_payload({"x": object()})


def test_parse_retry_after() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0  # in the past: no wait
    assert (
        parse_retry_after((now + timedelta(seconds=5)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now) == 5.0
    )
    for junk in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(junk) is None
