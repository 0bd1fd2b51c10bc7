"""Outbound-request guard for user-supplied URLs (image downloads, webhooks): no SSRF into our own network.

The policy is applied to the addresses a connection is actually made to, not to the URL text: a resolver
wrapper checks every address a name resolves to and hands aiohttp only checked ones, so there is no
second lookup a DNS-rebinding attacker could answer differently. aiohttp skips the resolver for IP-literal
hosts, so the connector checks those itself; both run for every request, redirects included.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

log = structlog.get_logger()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_N4 = ipaddress.IPv4Network
_N6 = ipaddress.IPv6Network

# Refused whatever allow_private says. Explicit tables rather than ipaddress.is_private/is_global: those
# lump link-local in with private and have changed between Python patch releases.
_V4_ALWAYS_REFUSED: Sequence[tuple[_N4, str]] = (
    (_N4("0.0.0.0/8"), "unspecified"),  # "this network"; Linux connects 0.0.0.0 to localhost
    (_N4("169.254.0.0/16"), "link-local"),  # incl. 169.254.169.254, the cloud metadata service
    (_N4("224.0.0.0/4"), "multicast"),
    (_N4("240.0.0.0/4"), "reserved"),  # incl. 255.255.255.255 broadcast
    (_N4("192.0.0.0/24"), "reserved"),  # IETF protocol assignments
    (_N4("192.0.2.0/24"), "reserved"),  # documentation (TEST-NET-1..3)
    (_N4("198.51.100.0/24"), "reserved"),
    (_N4("203.0.113.0/24"), "reserved"),
    (_N4("198.18.0.0/15"), "reserved"),  # benchmarking
    (_N4("192.88.99.0/24"), "reserved"),  # retired 6to4 relay anycast
)
# Refused unless allow_private (local development, on-prem image hosts).
_V4_PRIVATE: Sequence[tuple[_N4, str]] = (
    (_N4("127.0.0.0/8"), "loopback"),
    (_N4("10.0.0.0/8"), "private"),
    (_N4("172.16.0.0/12"), "private"),
    (_N4("192.168.0.0/16"), "private"),
    (_N4("100.64.0.0/10"), "private (CGNAT)"),  # RFC 6598 shared space: somebody's internal network
)

_V6_LOOPBACK = ipaddress.IPv6Address("::1")
_V6_UNSPECIFIED = ipaddress.IPv6Address("::")
_V6_IPV4_COMPATIBLE = _N6("::/96")  # deprecated ::a.b.c.d; never legitimate on the wire
_V6_NAT64 = _N6("64:ff9b::/96")  # well-known NAT64 prefix: a translator forwards to the embedded IPv4
_V6_6TO4 = _N6("2002::/16")
_V6_GLOBAL_UNICAST = _N6("2000::/3")  # everything outside it (after the cases above) is special-purpose
_V6_ALWAYS_REFUSED: Sequence[tuple[_N6, str]] = (
    (_N6("fe80::/10"), "link-local"),
    (_N6("ff00::/8"), "multicast"),
    (_N6("fec0::/10"), "reserved"),  # deprecated site-local
    (_N6("2001::/23"), "reserved"),  # IETF protocol assignments, incl. Teredo 2001::/32
    (_N6("2001:db8::/32"), "reserved"),  # documentation
    (_N6("3fff::/20"), "reserved"),  # documentation
)
_V6_PRIVATE: Sequence[tuple[_N6, str]] = ((_N6("fc00::/7"), "private (unique-local)"),)


def refusal_reason(ip: IPAddress, allow_private: bool) -> str | None:
    """Why a connection to `ip` is refused (e.g. "private", "link-local"), or None when it is allowed."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _refusal_v4(ip, allow_private)
    ip = ipaddress.IPv6Address(ip.packed)  # drop any %scope: it changes nothing about the class
    if ip.ipv4_mapped is not None:
        # ::ffff:a.b.c.d reaches a.b.c.d on a dual-stack socket: judge it exactly as that address.
        return _refusal_v4(ip.ipv4_mapped, allow_private)
    if ip == _V6_UNSPECIFIED:
        return "unspecified"
    if ip == _V6_LOOPBACK:
        return None if allow_private else "loopback"
    if ip in _V6_IPV4_COMPATIBLE:
        return "reserved (IPv4-compatible)"
    # Addresses that embed an IPv4 a gateway will forward to: the IPv4 must be public in any case,
    # since no translator or relay legitimately leads into a private network.
    if ip in _V6_NAT64:
        inner = _refusal_v4(ipaddress.IPv4Address(ip.packed[-4:]), allow_private=False)
        return f"{inner} via NAT64" if inner else None
    if ip.sixtofour is not None:
        inner = _refusal_v4(ip.sixtofour, allow_private=False)
        return f"{inner} via 6to4" if inner else None
    listed = _listed(ip, _V6_ALWAYS_REFUSED, _V6_PRIVATE, allow_private)
    if listed is not _UNLISTED:
        return listed
    return None if ip in _V6_GLOBAL_UNICAST else "reserved"


def _refusal_v4(ip: ipaddress.IPv4Address, allow_private: bool) -> str | None:
    listed = _listed(ip, _V4_ALWAYS_REFUSED, _V4_PRIVATE, allow_private)
    return None if listed is _UNLISTED else listed


_UNLISTED = "<not in the tables>"


def _listed(
    ip: IPAddress,
    refused: Sequence[tuple[_N4, str]] | Sequence[tuple[_N6, str]],
    private: Sequence[tuple[_N4, str]] | Sequence[tuple[_N6, str]],
    allow_private: bool,
) -> str | None:
    """The refusal reason the tables give `ip` (None: a private range, allowed), or _UNLISTED."""
    for net, reason in refused:
        if ip in net:
            return reason
    for net, reason in private:
        if ip in net:
            return None if allow_private else reason
    return _UNLISTED


class BlockedAddressError(Exception):
    """A request's host is, or resolves to, an address the policy refuses.

    Deliberately not an OSError/aiohttp.ClientError, so aiohttp does not wrap it and callers do not
    mistake it for a transient network failure worth retrying.
    """

    def __init__(self, host: str, ip: str, reason: str) -> None:
        super().__init__(f"refused address {ip} ({reason}) for host {host}")
        self.host = host
        self.ip = ip
        self.reason = reason

    @property
    def public_reason(self) -> str:
        """What to tell the user: the class of address, never the address a name resolved to (that would
        map our internal network for whoever submits names that resolve into it)."""
        return f"refused address ({self.reason}) for host {self.host}"


def check_host_literal(host: str, allow_private: bool) -> None:
    """Raise BlockedAddressError if `host` is an IP literal the policy refuses; names pass through.

    Anything aiohttp would treat as a literal (and so never resolve) but that does not parse as a
    canonical address, such as "2130706433" or "127.1", is refused too: nothing reaches a socket unchecked.
    """
    if not _looks_like_ip_literal(host):
        return
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise BlockedAddressError(host, host, "not a canonical IP address") from None
    reason = refusal_reason(ip, allow_private)
    if reason is not None:
        raise BlockedAddressError(host, str(ip), reason)


def _looks_like_ip_literal(host: str) -> bool:
    # Mirrors aiohttp's own test for "skip the resolver" (helpers.is_ip_address), so the two agree.
    return ":" in host or host.replace(".", "").isdigit()


class GuardedResolver(AbstractResolver):
    """Resolves with `inner`, then refuses the whole answer if any address is refused.

    Refusing when *any* address is bad (not just filtering it out) makes a name that mixes public and
    internal addresses fail loudly instead of working by chance of address order.
    """

    def __init__(self, *, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            try:
                ip = ipaddress.ip_address(result["host"])
            except ValueError:
                raise BlockedAddressError(host, result["host"], "unparseable address") from None
            reason = refusal_reason(ip, self._allow_private)
            if reason is not None:
                log.warning("netguard.refused", host=host, ip=str(ip), reason=reason)
                raise BlockedAddressError(host, str(ip), reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """TCPConnector that also checks IP-literal hosts, which aiohttp never passes to the resolver.

    `connect` runs for every request aiohttp sends, including each redirect hop it follows itself and
    requests served from pooled connections, so the check cannot be skipped by a redirect.
    """

    def __init__(self, *, allow_private: bool, resolver: AbstractResolver, limit: int) -> None:
        super().__init__(resolver=resolver, limit=limit)
        self._allow_private = allow_private

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - signature fixed by aiohttp
    ) -> Connection:
        if req.proxy is not None:
            # A proxy would resolve and connect to the target for us, out of the guard's sight.
            raise BlockedAddressError(str(req.url.host), str(req.proxy.host), "proxies are not allowed")
        host = req.url.raw_host
        if host is None:
            raise aiohttp.InvalidURL(req.url)
        try:
            check_host_literal(host, self._allow_private)
        except BlockedAddressError as exc:
            log.warning("netguard.refused", host=host, ip=exc.ip, reason=exc.reason)
            raise
        return await super().connect(req, traces, timeout)


def guarded_session(
    *,
    allow_private: bool,
    connect_timeout: float,
    read_timeout: float,
    total_timeout: float,
    limit: int = 100,
    inner_resolver: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """A ClientSession that can only connect to addresses the policy allows. Call inside a running loop.

    A refused address surfaces as BlockedAddressError from the request. `inner_resolver` replaces the
    system resolver (tests map names without DNS). trust_env stays off: an environment proxy would
    bypass the guard. Callers must not pass `proxy=` (refused) and own closing the session.
    """
    connector = GuardedConnector(
        allow_private=allow_private,
        resolver=GuardedResolver(allow_private=allow_private, inner=inner_resolver),
        limit=limit,
    )
    # sock_connect rather than connect: the latter also counts time spent waiting for a pool slot,
    # which is our own back-pressure, not the origin's slowness.
    timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout)
    # No cookie jar: requests for different uploaders share the session, and must not share state.
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
    )
