"""SafeFetcher and guarded_session against a real aiohttp.web origin on 127.0.0.1.

Reaching 127.0.0.1 needs allow_private=True; the strict-policy tests check that nothing reaches the
origin. Names are mapped by a test resolver underneath the guard, so no real DNS is involved, and every
address a guard failure could lead to is a local one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from io import BytesIO

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

from services.compressor.fetch import FetchError, FetchPolicy, SafeFetcher
from shared.magic import describe_non_image, sniff_image
from shared.netguard import BlockedAddressError, guarded_session
from shared.retry import parse_retry_after
from shared.settings import Settings
from tests.fake_dns import StaticResolver


def _encode(fmt: str, **params: object) -> bytes:
    out = BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, fmt, **params)
    return out.getvalue()


PNG = _encode("PNG")
HTML = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>nope</body></html>\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Origin:
    """The image host: routes defined by each test, hits counted per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: Counter[str] = Counter()
        self.release = asyncio.Event()  # lets stalled handlers end so shutdown is quick
        self.base = ""
        self.port = 0

    def url(self, path: str) -> str:
        return self.base + path

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="no such route")
        return await handler(request)

    async def stall(self) -> None:
        # Far longer than any client timeout below, but bounded so a broken test can't hang.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), 5)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    org = Origin()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", org.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    org.base, org.port = f"http://{host}:{port}", port
    yield org
    org.release.set()
    await runner.cleanup()


def policy(**overrides: object) -> FetchPolicy:
    base: dict[str, object] = dict(
        allow_private=True,
        max_bytes=256 * 1024,
        max_redirects=3,
        connect_timeout=0.5,
        read_timeout=0.5,
        total_timeout=3.0,
        attempts=3,
        backoff=0.01,
    )
    base.update(overrides)
    return FetchPolicy(**base)  # type: ignore[arg-type]


async def fetch(url: str, resolver: AbstractResolver | None = None, **overrides: object) -> bytes:
    async with SafeFetcher(policy(**overrides), resolver=resolver) as fetcher:
        return await fetcher.fetch(url)


async def fetch_error(url: str, resolver: AbstractResolver | None = None, **overrides: object) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetch(url, resolver, **overrides)
    return info.value


def png_route(content_type: str = "image/png") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PNG, content_type=content_type)

    return handler


# --- success and type sniffing -------------------------------------------------------------------------


async def test_fetches_an_image(origin: Origin) -> None:
    origin.routes["/a.png"] = png_route()
    assert await fetch(origin.url("/a.png")) == PNG


async def test_content_type_is_ignored_when_the_bytes_are_an_image(origin: Origin) -> None:
    origin.routes["/a.png"] = png_route("text/html")
    assert await fetch(origin.url("/a.png")) == PNG


async def test_html_served_as_jpeg_fails_permanently(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=HTML, content_type="image/jpeg")

    origin.routes["/a.jpg"] = handler
    err = await fetch_error(origin.url("/a.jpg"))
    assert not err.retryable
    assert err.reason == "not an image (looks like HTML)"
    assert origin.hits["/a.jpg"] == 1  # not retried


async def test_non_image_is_rejected_on_its_first_bytes(origin: Origin) -> None:
    # The page never ends: the fetcher must decide from the first bytes, not wait for the rest.
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(HTML)
        await origin.stall()
        return resp

    origin.routes["/page"] = handler
    started = time.monotonic()
    err = await fetch_error(origin.url("/page"), read_timeout=3.0)
    assert err.reason == "not an image (looks like HTML)"
    assert time.monotonic() - started < 1.0


async def test_empty_body_is_not_an_image(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, body=b"", content_type="image/png")

    origin.routes["/empty"] = handler
    err = await fetch_error(origin.url("/empty"))
    assert (err.reason, err.retryable) == ("not an image (empty body)", False)


# --- size limits ---------------------------------------------------------------------------------------


async def test_endless_body_is_cut_off_at_max_bytes(origin: Origin) -> None:
    total = 64 * 1024 * 1024
    sent = 0
    finished = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})  # chunked: no Content-Length
        await resp.prepare(request)
        try:
            await resp.write(PNG[:16])
            chunk = b"\0" * 65536
            while sent < total:
                await resp.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            pass  # the client hung up, as it should
        finally:
            finished.set()
        return resp

    origin.routes["/huge"] = handler
    err = await fetch_error(origin.url("/huge"), max_bytes=256 * 1024)
    assert (err.reason, err.retryable) == ("body exceeds 256 KB limit", False)
    await asyncio.wait_for(finished.wait(), 5)
    # Only what the sockets' buffers could absorb got out; a client reading on would have taken all of it.
    assert sent < total // 2
    assert origin.hits["/huge"] == 1


async def test_declared_oversize_body_is_refused_before_reading(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PNG + b"\0" * (2 * 1024 * 1024), content_type="image/png")

    origin.routes["/big"] = handler
    err = await fetch_error(origin.url("/big"), max_bytes=1024 * 1024)
    assert not err.retryable
    assert err.reason.startswith("body exceeds 1 MB limit (Content-Length 2 MB")


async def test_body_at_exactly_max_bytes_is_accepted(origin: Origin) -> None:
    origin.routes["/a.png"] = png_route()
    assert await fetch(origin.url("/a.png"), max_bytes=len(PNG)) == PNG
    err = await fetch_error(origin.url("/a.png"), max_bytes=len(PNG) - 1)
    assert err.reason.startswith("body exceeds")


# --- status codes and retries --------------------------------------------------------------------------


async def test_404_fails_at_once(origin: Origin) -> None:
    err = await fetch_error(origin.url("/missing.png"))
    assert (err.reason, err.retryable) == ("HTTP 404 from origin", False)
    assert origin.hits["/missing.png"] == 1


async def test_500_then_200_is_retried(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if origin.hits["/flaky"] == 1:
            return web.Response(status=500)
        return web.Response(body=PNG)

    origin.routes["/flaky"] = handler
    assert await fetch(origin.url("/flaky")) == PNG
    assert origin.hits["/flaky"] == 2


async def test_persistent_5xx_gives_up_after_all_attempts(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502)

    origin.routes["/down"] = handler
    err = await fetch_error(origin.url("/down"), attempts=3)
    assert (err.reason, err.retryable) == ("HTTP 502 from origin after 3 attempts", True)
    assert origin.hits["/down"] == 3


def _in_seconds(seconds: int) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize("retry_after", ["1", "date"])
async def test_429_retry_after_is_honoured_up_to_the_cap(origin: Origin, retry_after: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if origin.hits["/busy"] == 1:
            value = _in_seconds(2) if retry_after == "date" else retry_after
            return web.Response(status=429, headers={"Retry-After": value})
        return web.Response(body=PNG)

    origin.routes["/busy"] = handler
    started = time.monotonic()
    # The server asks for 1-2 s; the cap is 0.3 s; the back-off alone would be ~0.01 s.
    assert await fetch(origin.url("/busy"), max_retry_after=0.3) == PNG
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.9
    assert origin.hits["/busy"] == 2


async def test_retry_after_beyond_the_time_budget_gives_up_at_once(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "120"})

    origin.routes["/maint"] = handler
    started = time.monotonic()
    err = await fetch_error(origin.url("/maint"), total_timeout=2.0)
    assert time.monotonic() - started < 1.0
    assert err.retryable
    assert err.reason == "HTTP 503 from origin; no time left for a retry after 1 attempt"
    assert origin.hits["/maint"] == 1


async def test_slow_headers_time_out_and_are_retried(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await origin.stall()
        return web.Response(body=PNG)

    origin.routes["/slow"] = handler
    started = time.monotonic()
    err = await fetch_error(origin.url("/slow"), read_timeout=0.2, attempts=2)
    assert (err.reason, err.retryable) == ("timed out after 2 attempts", True)
    assert origin.hits["/slow"] == 2
    assert 0.4 <= time.monotonic() - started < 1.5


async def test_stalled_body_times_out(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(PNG[:20])
        await origin.stall()
        return resp

    origin.routes["/trickle"] = handler
    err = await fetch_error(origin.url("/trickle"), read_timeout=0.2, attempts=1)
    assert (err.reason, err.retryable) == ("timed out after 1 attempt", True)


async def test_total_budget_bounds_the_whole_fetch(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await origin.stall()
        return web.Response(body=PNG)

    origin.routes["/slow"] = handler
    started = time.monotonic()
    err = await fetch_error(origin.url("/slow"), read_timeout=10, total_timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert err.reason == "timed out after 1 attempt (0.3 s limit)"
    assert err.retryable


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    err = await fetch_error(f"http://127.0.0.1:{port}/a.png", attempts=2)
    assert (err.reason, err.retryable) == (f"could not connect to 127.0.0.1:{port} after 2 attempts", True)


async def test_a_slow_download_does_not_stall_others(origin: Origin) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await origin.stall()
        return web.Response(body=PNG)

    origin.routes["/slow"] = slow
    origin.routes["/fast"] = png_route()
    async with SafeFetcher(policy(read_timeout=3.0)) as fetcher:
        slow_task = asyncio.create_task(fetcher.fetch(origin.url("/slow")))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(fetcher.fetch(origin.url("/fast")), 0.5) == PNG
        assert not slow_task.done()
        origin.release.set()
        assert await slow_task == PNG


# --- redirects -----------------------------------------------------------------------------------------


def _chain(origin: Origin) -> None:
    # /r/N redirects to /r/N-1, alternating absolute and relative Locations; /r/0 is the image.
    async def handler(request: web.Request) -> web.StreamResponse:
        n = int(request.path.rsplit("/", 1)[1])
        if n == 0:
            return web.Response(body=PNG)
        location = origin.url(f"/r/{n - 1}") if n % 2 else str(n - 1)
        return web.Response(status=302 if n % 3 else 307, headers={"Location": location})

    for n in range(10):
        origin.routes[f"/r/{n}"] = handler


async def test_redirect_chain_within_the_limit_is_followed(origin: Origin) -> None:
    _chain(origin)
    assert await fetch(origin.url("/r/3"), max_redirects=3) == PNG
    assert [origin.hits[f"/r/{n}"] for n in range(4)] == [1, 1, 1, 1]


async def test_redirect_chain_over_the_limit_fails(origin: Origin) -> None:
    _chain(origin)
    err = await fetch_error(origin.url("/r/4"), max_redirects=3)
    assert (err.reason, err.retryable) == ("too many redirects (more than 3)", False)
    assert origin.hits["/r/0"] == 0
    assert origin.hits["/r/4"] == 1  # permanent: not retried


async def test_redirect_loop_fails(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=301, headers={"Location": "/loop"})

    origin.routes["/loop"] = handler
    err = await fetch_error(origin.url("/loop"), max_redirects=5)
    assert err.reason == "too many redirects (more than 5)"
    assert origin.hits["/loop"] == 6


def _redirect_to(origin: Origin, location: str) -> str:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    origin.routes["/go"] = handler
    return origin.url("/go")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "refused address (link-local) for host 169.254.169.254"),
        ("http://metadata.test/latest/meta-data/", "refused address (link-local) for host metadata.test"),
        ("http://[::ffff:169.254.169.254]/", "refused address (link-local) for host ::ffff:a9fe:a9fe"),
        ("http://224.0.0.1/", "refused address (multicast) for host 224.0.0.1"),
        # Linux would connect these to the local origin, so a guard failure would show as a success.
        ("http://0.0.0.0:{port}/a.png", "refused address (unspecified) for host 0.0.0.0"),
        ("http://[::]:{port}/a.png", "refused address (unspecified) for host ::"),
        (
            "http://2130706433:{port}/a.png",
            "refused address (not a canonical IP address) for host 2130706433",
        ),
        ("http://127.1:{port}/a.png", "refused address (not a canonical IP address) for host 127.1"),
    ],
)
async def test_redirect_to_a_refused_address_fails_before_connecting(
    origin: Origin, target: str, reason: str
) -> None:
    origin.routes["/a.png"] = png_route()
    resolver = StaticResolver({"metadata.test": ["169.254.169.254"]})
    err = await fetch_error(_redirect_to(origin, target.format(port=origin.port)), resolver)
    assert (err.reason, err.retryable) == (reason, False)
    assert origin.hits["/go"] == 1  # refusals are not retried
    assert origin.hits["/a.png"] == 0


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("file:///etc/passwd", "redirect to unsupported URL scheme 'file' (only http and https)"),
        ("ftp://127.0.0.1/a.png", "redirect to unsupported URL scheme 'ftp' (only http and https)"),
        (
            "gopher://127.0.0.1:6379/_INFO",
            "redirect to unsupported URL scheme 'gopher' (only http and https)",
        ),
    ],
)
async def test_redirect_to_a_bad_scheme_fails(origin: Origin, target: str, reason: str) -> None:
    err = await fetch_error(_redirect_to(origin, target))
    assert (err.reason, err.retryable) == (reason, False)


async def test_redirect_without_location_fails(origin: Origin) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302)

    origin.routes["/go"] = handler
    err = await fetch_error(origin.url("/go"))
    assert (err.reason, err.retryable) == ("HTTP 302 redirect without a Location", False)


# --- URL and address policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/a.png", "unsupported URL scheme 'ftp' (only http and https)"),
        ("file:///etc/passwd", "unsupported URL scheme 'file' (only http and https)"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript' (only http and https)"),
        ("data:image/png;base64,iVBORw0KGgo=", "unsupported URL scheme 'data' (only http and https)"),
        ("//127.0.0.1/a.png", "not an absolute http(s) URL"),
        ("a.png", "not an absolute http(s) URL"),
        ("http:///a.png", "URL has no host"),
        ("http://[::1/a.png", "invalid URL"),
    ],
)
async def test_bad_urls_fail_without_a_request(origin: Origin, url: str, reason: str) -> None:
    err = await fetch_error(url)
    assert (err.reason, err.retryable) == (reason, False)
    assert not origin.hits


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "refused address (loopback) for host 127.0.0.1"),
        ("[::ffff:127.0.0.1]", "refused address (loopback) for host ::ffff:7f00:1"),
        ("[::1]", "refused address (loopback) for host ::1"),
        ("localhost", "refused address"),  # system resolver: /etc/hosts, no DNS traffic
        ("evil.test", "refused address (loopback) for host evil.test"),
        ("internal.test", "refused address (private) for host internal.test"),
    ],
)
async def test_strict_policy_refuses_local_targets_before_any_request(
    origin: Origin, host: str, reason: str
) -> None:
    origin.routes["/a.png"] = png_route()
    names = {"evil.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"]}
    resolver = None if host == "localhost" else StaticResolver(names)
    err = await fetch_error(f"http://{host}:{origin.port}/a.png", resolver, allow_private=False)
    assert err.reason.startswith(reason)
    assert not err.retryable
    assert not origin.hits


async def test_a_refusal_names_the_class_of_address_never_the_address_a_name_resolved_to(
    origin: Origin,
) -> None:
    resolver = StaticResolver({"intranet.test": ["10.20.30.40"]})
    err = await fetch_error(f"http://intranet.test:{origin.port}/a.png", resolver, allow_private=False)
    assert err.reason == "refused address (private) for host intranet.test"
    assert "10.20.30.40" not in err.reason


async def test_name_mixing_allowed_and_refused_addresses_is_refused(origin: Origin) -> None:
    origin.routes["/a.png"] = png_route()
    resolver = StaticResolver({"mixed.test": ["127.0.0.1", "169.254.169.254"]})
    err = await fetch_error(f"http://mixed.test:{origin.port}/a.png", resolver)
    assert err.reason == "refused address (link-local) for host mixed.test"
    assert not origin.hits


async def test_names_resolve_through_the_injected_resolver(origin: Origin) -> None:
    seen_host = ""

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal seen_host
        seen_host = request.host
        return web.Response(body=PNG)

    origin.routes["/a.png"] = handler
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    assert await fetch(f"http://images.test:{origin.port}/a.png", resolver) == PNG
    assert seen_host == f"images.test:{origin.port}"


async def test_unknown_host_fails_permanently() -> None:
    err = await fetch_error("http://nowhere.test/a.png", StaticResolver({}))
    assert (err.reason, err.retryable) == ("host not found: nowhere.test", False)


async def test_checked_addresses_are_the_ones_connected_to(origin: Origin) -> None:
    # A rebinding DNS answers the check with a good address and the connect with a bad one. The guard
    # sits in the resolver, so there is exactly one lookup per connection: the second answer (which
    # would fail loudly here) is never asked for.
    class Rebinding(StaticResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            if self.lookups[host]:
                raise OSError("second lookup")
            return await super().resolve(host, port, family)

    origin.routes["/a.png"] = png_route()
    resolver = Rebinding({"rebind.test": ["127.0.0.1"]})
    assert await fetch(f"http://rebind.test:{origin.port}/a.png", resolver) == PNG
    assert resolver.lookups["rebind.test"] == 1
    assert origin.hits["/a.png"] == 1


# --- guarded_session used directly (as the notifier does) -----------------------------------------------


async def test_guarded_session_refuses_ip_literal_before_connecting(origin: Origin) -> None:
    origin.routes["/a.png"] = png_route()
    async with guarded_session(
        allow_private=False, connect_timeout=0.5, read_timeout=0.5, total_timeout=2
    ) as session:
        with pytest.raises(BlockedAddressError) as info:
            await session.get(origin.url("/a.png"))
    assert (info.value.ip, info.value.reason) == ("127.0.0.1", "loopback")
    assert not origin.hits


async def test_guarded_session_checks_redirects_it_follows_itself(origin: Origin) -> None:
    origin.routes["/a.png"] = png_route()
    async with guarded_session(
        allow_private=True, connect_timeout=0.5, read_timeout=0.5, total_timeout=2
    ) as session:
        async with session.get(origin.url("/a.png")) as resp:
            assert await resp.read() == PNG
        with pytest.raises(BlockedAddressError) as info:
            await session.get(_redirect_to(origin, "http://169.254.169.254/latest/meta-data/"))
        with pytest.raises(BlockedAddressError):
            await session.get(_redirect_to(origin, f"http://0.0.0.0:{origin.port}/a.png"))
    assert info.value.reason == "link-local"
    assert origin.hits["/a.png"] == 1


async def test_guarded_session_refuses_proxies(origin: Origin) -> None:
    async with guarded_session(
        allow_private=True, connect_timeout=0.5, read_timeout=0.5, total_timeout=2
    ) as session:
        with pytest.raises(BlockedAddressError, match="proxies are not allowed"):
            await session.get("http://example.test/", proxy=origin.url("/"))
    assert not origin.hits


# --- pure logic -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (_encode("JPEG"), "jpeg"),
        (PNG, "png"),
        (_encode("GIF"), "gif"),
        (_encode("WEBP"), "webp"),
        (_encode("BMP"), "bmp"),
        (_encode("TIFF"), "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "heif"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00", None),  # an MP4 video
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (HTML, None),
        (b"", None),
    ],
    ids=[
        "jpeg",
        "png",
        "gif",
        "webp",
        "bmp",
        "tiff-le",
        "tiff-be",
        "avif",
        "heic",
        "mp4",
        "wav",
        "html",
        "empty",
    ],
)
def test_sniff_image(data: bytes, fmt: str | None) -> None:
    assert sniff_image(data) == fmt


@pytest.mark.parametrize(
    ("data", "description"),
    [
        (HTML, "looks like HTML"),
        (b"\xef\xbb\xbf  \n<html lang=en>", "looks like HTML"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "looks like SVG, which is not supported"),
        (b'<?xml version="1.0"?><svg/>', "looks like SVG, which is not supported"),
        (b'{"error": "forbidden"}', "looks like JSON"),
        (b"%PDF-1.7\n", "looks like PDF"),
        (b"Access denied\n", "looks like text"),
        (b"\x00\x01\x02\x03\x04", "unknown binary format"),
        (b"", "empty body"),
    ],
    ids=["html", "html-bom", "svg", "svg-xml", "json", "pdf", "text", "binary", "empty"],
)
def test_describe_non_image(data: bytes, description: str) -> None:
    assert describe_non_image(data) == description


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:42 GMT", now) == 42.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None
    for foreign_digits in ("\u00b2", "\u0661\u0662", "\uff13"):  # superscript, Arabic-Indic, fullwidth
        assert parse_retry_after(foreign_digits, now) is None


async def test_a_retry_after_in_non_ascii_digits_is_ignored_not_a_crash(origin: Origin) -> None:
    served = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal served
        served += 1
        if served == 1:
            return web.Response(status=503, headers={"Retry-After": "\u00b2"})
        return web.Response(body=PNG, content_type="image/png")

    origin.routes["/busy"] = handler
    assert await fetch(origin.url("/busy")) == PNG
    assert served == 2


def test_policy_from_settings() -> None:
    settings = Settings.model_validate(
        {"fetch_allow_private": True, "fetch_max_bytes": 1234, "fetch_attempts": 4, "fetch_read_timeout": 2.5}
    )
    p = FetchPolicy.from_settings(settings)
    assert (p.allow_private, p.max_bytes, p.attempts, p.read_timeout) == (True, 1234, 4, 2.5)
    assert (p.max_redirects, p.total_timeout, p.backoff) == (5, 60.0, 0.5)
