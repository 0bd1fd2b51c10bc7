"""Downloads one image from an untrusted URL: SSRF-guarded, size- and time-bounded, retried when it may help.

Every failure is a FetchError whose `reason` is short enough to show the uploader as-is and whose
`retryable` flag tells the caller whether asking again later could change anything.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver
from yarl import URL

from services.compressor.hosts import CircuitBreakers, HostUnresponsive, origin_of
from shared.magic import SNIFF_BYTES, describe_non_image, sniff_image
from shared.netguard import BlockedAddressError, guarded_session
from shared.retry import backoff_delay, parse_retry_after, retryable_status

if TYPE_CHECKING:
    from shared.settings import Settings

log = structlog.get_logger()

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_HEADERS = {
    "User-Agent": "imagepipe-fetcher/1.0",
    "Accept": "image/*",
    # Images don't gain from transfer compression, and identity keeps max_bytes a limit on the wire too.
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    max_bytes: int = 25 * 1024 * 1024
    max_redirects: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 15.0  # longest silence while waiting for headers or the next body bytes
    total_timeout: float = 60.0  # the whole fetch: every attempt, redirect and back-off sleep
    attempts: int = 3
    backoff: float = 0.5  # first retry waits about this long, doubling after each further failure
    max_retry_after: float = 30.0  # cap on a server's Retry-After, so one origin can't park a worker

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """The policy the `fetch_*` settings describe (each field is its setting without the prefix)."""
        configured = {f.name: getattr(settings, f"fetch_{f.name}", None) for f in fields(cls)}
        return cls(**{name: value for name, value in configured.items() if value is not None})


class FetchError(Exception):
    """A download failed. `reason` is meant for humans; `retryable` means a later try may succeed."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class _Retryable(FetchError):
    """One attempt failed in a way another attempt may not; `retry_after` is the server's wish, if any.
    `unresponsive`: the host did not answer at all (a timeout or a connection failure), which is what
    its circuit breaker counts; an HTTP error status is an answer."""

    def __init__(self, reason: str, retry_after: float | None = None, *, unresponsive: bool = False) -> None:
        super().__init__(reason, retryable=True)
        self.retry_after = retry_after
        self.unresponsive = unresponsive


class SafeFetcher:
    """Fetches image bytes; one instance (one connection pool) per process, closed on shutdown."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: AbstractResolver | None = None,
        breakers: CircuitBreakers | None = None,
    ) -> None:
        # `resolver` replaces system DNS underneath the address guard; tests use it to map names.
        self._policy = policy
        self._resolver = resolver
        self._breakers = breakers or CircuitBreakers(failures_to_open=10**9)  # none given: never opens
        self._session: aiohttp.ClientSession | None = None
        # No per-request total: fetch() holds one deadline over all attempts, redirects and sleeps.
        self._request_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=policy.connect_timeout, sock_read=policy.read_timeout
        )

    async def __aenter__(self) -> SafeFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> bytes:
        """The body of `url` if it is an image within the limits; FetchError otherwise.

        The error is final for this image: every attempt the policy allows has been made (`retryable`
        only says whether a later try might succeed). Every attempt first asks the host's circuit breaker,
        so once a host is known to be unresponsive its images fail at once."""
        policy = self._policy
        start = _parse_url(url)
        origin = origin_of(start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.total_timeout
        attempt = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    attempt += 1
                    failure = await self._breaker_guarded_attempt(start, origin)
                    if isinstance(failure, bytes):
                        return failure
                    if attempt >= policy.attempts:
                        raise FetchError(
                            f"{failure.reason} after {_count(attempt, 'attempt')}", retryable=True
                        ) from failure
                    delay = self._delay(attempt, failure.retry_after)
                    if loop.time() + delay >= deadline:
                        # Sleeping into the deadline would only postpone the same answer.
                        raise FetchError(
                            f"{failure.reason}; no time left for a retry after {_count(attempt, 'attempt')}",
                            retryable=True,
                        ) from failure
                    log.info(
                        "fetch.retry",
                        url=_loggable(start),
                        attempt=attempt,
                        reason=failure.reason,
                        delay=round(delay, 3),
                    )
                    await asyncio.sleep(delay)
        except TimeoutError:
            raise FetchError(
                f"timed out after {_count(attempt, 'attempt')} ({policy.total_timeout:g} s limit)",
                retryable=True,
            ) from None

    async def _breaker_guarded_attempt(self, start: URL, origin: str) -> bytes | _Retryable:
        """One attempt, if the host's breaker allows it: the body, or the retryable failure."""
        try:
            self._breakers.check(origin)
        except HostUnresponsive as exc:
            raise FetchError(exc.reason, retryable=True) from None
        try:
            body = await self._attempt(start)
        except _Retryable as exc:
            if exc.unresponsive:
                self._breakers.failed(origin)
            else:
                self._breakers.succeeded(origin)
            return exc
        self._breakers.succeeded(origin)
        return body

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        # Half jitter: workers retrying one origin don't march in step, and none retries at once.
        return backoff_delay(
            attempt - 1,
            base=self._policy.backoff,
            max_delay=self._policy.max_retry_after,
            jitter=0.5,
            retry_after=retry_after,
        )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: it needs the running loop
            p = self._policy
            self._session = guarded_session(
                allow_private=p.allow_private,
                connect_timeout=p.connect_timeout,
                read_timeout=p.read_timeout,
                total_timeout=p.total_timeout,
                inner_resolver=self._resolver,
            )
        return self._session

    async def _attempt(self, start: URL) -> bytes:
        """One try: follow redirects by hand (each hop re-checked) and read the final body."""
        session = self._get_session()
        url = start
        for _hop in range(self._policy.max_redirects + 1):
            try:
                async with session.get(
                    url, allow_redirects=False, headers=_HEADERS, timeout=self._request_timeout
                ) as resp:
                    if resp.status in _REDIRECTS:
                        url = _redirect_target(resp)
                        continue
                    _check_status(resp)
                    return await self._read_body(resp)
            except FetchError:
                raise
            except BlockedAddressError as exc:
                raise FetchError(exc.public_reason) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _classify(exc, url) from exc
        raise FetchError(f"too many redirects (more than {self._policy.max_redirects})")

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._policy.max_bytes
        declared = resp.content_length
        if declared is not None and declared > limit:
            raise FetchError(f"body exceeds {_size(limit)} limit (Content-Length {_size(declared)})")
        body = bytearray()
        sniffed = False
        async for chunk in resp.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise FetchError(f"body exceeds {_size(limit)} limit")
            if not sniffed and len(body) >= SNIFF_BYTES:
                _require_image(body)  # fail on the first bytes, not after downloading a web page
                sniffed = True
        if not sniffed:
            _require_image(body)
        return bytes(body)


def _parse_url(raw: str) -> URL:
    try:
        url = URL(raw.strip())
    except (ValueError, TypeError):
        raise FetchError("invalid URL") from None
    _check_url(url)
    return url


def _check_url(url: URL) -> None:
    if not url.scheme:
        raise FetchError("not an absolute http(s) URL")
    if url.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {url.scheme!r} (only http and https)")
    if not url.raw_host:
        raise FetchError("URL has no host")


def _redirect_target(resp: aiohttp.ClientResponse) -> URL:
    location = resp.headers.get("Location")
    if not location:
        raise FetchError(f"HTTP {resp.status} redirect without a Location")
    try:
        target = resp.url.join(URL(location))  # handles relative Locations
    except (ValueError, TypeError):
        raise FetchError("invalid redirect Location") from None
    try:
        _check_url(target)
    except FetchError as exc:
        raise FetchError(f"redirect to {exc.reason}") from None
    return target


def _check_status(resp: aiohttp.ClientResponse) -> None:
    status = resp.status
    if 200 <= status < 300:
        return
    reason = f"HTTP {status} from origin"
    if retryable_status(status):
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise _Retryable(reason, retry_after)
    raise FetchError(reason)


def _classify(exc: BaseException, url: URL) -> FetchError:
    """Map an aiohttp failure onto a reason and whether retrying may help."""
    host = url.host or "?"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        # gaierror's EAI_NONAME: the name does not exist, which a retry won't change.
        if getattr(exc.os_error, "errno", None) == socket.EAI_NONAME:
            return FetchError(f"host not found: {host}")
        return _Retryable(f"DNS lookup failed for {host}")
    if isinstance(exc, aiohttp.ClientSSLError):
        return FetchError(f"TLS error talking to {host}")
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError)):
        return _Retryable("timed out", unresponsive=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _Retryable(f"could not connect to {host}:{url.port}", unresponsive=True)
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchError("invalid URL")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        return _Retryable("connection dropped by origin", unresponsive=True)
    if isinstance(exc, aiohttp.ClientResponseError):
        return FetchError("malformed HTTP response from origin")
    return _Retryable(f"request failed ({type(exc).__name__})")


def _require_image(head: bytes | bytearray) -> None:
    if sniff_image(head) is None:
        raise FetchError(f"not an image ({describe_non_image(head)})")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _loggable(url: URL) -> str:
    # Query strings of image URLs often carry signatures or tokens: keep them out of logs.
    return str(url.with_query(None).with_fragment(None).with_user(None))
