"""Address policy of shared.netguard: which destinations an outbound request may reach."""

from __future__ import annotations

import ipaddress

import pytest

from shared.netguard import (
    BlockedAddressError,
    GuardedResolver,
    check_host_literal,
    refusal_reason,
)
from tests.fake_dns import StaticResolver

# (address, allowed when allow_private=False, allowed when allow_private=True, reason when refused strictly)
CASES: list[tuple[str, bool, bool, str | None]] = [
    # public
    ("93.184.216.34", True, True, None),
    ("8.8.8.8", True, True, None),
    ("2606:4700:4700::1111", True, True, None),
    ("2a00:1450:4001:80b::200e", True, True, None),
    # loopback
    ("127.0.0.1", False, True, "loopback"),
    ("127.255.255.254", False, True, "loopback"),
    ("::1", False, True, "loopback"),
    # RFC 1918 / unique-local / CGNAT
    ("10.0.0.1", False, True, "private"),
    ("172.16.0.1", False, True, "private"),
    ("172.31.255.255", False, True, "private"),
    ("192.168.1.1", False, True, "private"),
    ("100.64.0.1", False, True, "private (CGNAT)"),
    ("100.127.255.254", False, True, "private (CGNAT)"),
    ("fc00::1", False, True, "private (unique-local)"),
    ("fd12:3456:789a::1", False, True, "private (unique-local)"),
    # just outside the private ranges
    ("172.32.0.1", True, True, None),
    ("100.128.0.1", True, True, None),
    ("11.0.0.1", True, True, None),
    # link-local, incl. the cloud metadata service: refused even with allow_private
    ("169.254.169.254", False, False, "link-local"),
    ("169.254.0.1", False, False, "link-local"),
    ("fe80::1", False, False, "link-local"),
    ("fe80::1%2", False, False, "link-local"),
    # unspecified
    ("0.0.0.0", False, False, "unspecified"),
    ("0.1.2.3", False, False, "unspecified"),
    ("::", False, False, "unspecified"),
    # multicast / broadcast / reserved / documentation
    ("224.0.0.1", False, False, "multicast"),
    ("239.255.255.250", False, False, "multicast"),
    ("ff02::1", False, False, "multicast"),
    ("255.255.255.255", False, False, "reserved"),
    ("240.0.0.1", False, False, "reserved"),
    ("192.0.2.10", False, False, "reserved"),
    ("198.51.100.1", False, False, "reserved"),
    ("203.0.113.7", False, False, "reserved"),
    ("198.18.0.1", False, False, "reserved"),
    ("192.0.0.170", False, False, "reserved"),
    ("2001:db8::1", False, False, "reserved"),
    ("fec0::1", False, False, "reserved"),
    ("100::1", False, False, "reserved"),  # discard-only prefix, outside 2000::/3
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False, False, "reserved"),  # Teredo
    # IPv4-mapped: judged exactly as the IPv4 they carry
    ("::ffff:127.0.0.1", False, True, "loopback"),
    ("::ffff:10.1.2.3", False, True, "private"),
    ("::ffff:169.254.169.254", False, False, "link-local"),
    ("::ffff:0.0.0.0", False, False, "unspecified"),
    ("::ffff:93.184.216.34", True, True, None),
    # IPv4-compatible (deprecated): always refused
    ("::127.0.0.1", False, False, "reserved (IPv4-compatible)"),
    ("::93.184.216.34", False, False, "reserved (IPv4-compatible)"),
    # NAT64 and 6to4: the embedded IPv4 must be public, whatever allow_private says
    ("64:ff9b::93.184.216.34", True, True, None),
    ("64:ff9b::127.0.0.1", False, False, "loopback via NAT64"),
    ("64:ff9b::169.254.169.254", False, False, "link-local via NAT64"),
    ("64:ff9b::10.0.0.1", False, False, "private via NAT64"),
    ("64:ff9b:1::a00:1", False, False, "reserved"),  # local-use NAT64 prefix
    ("2002:5db8:d822::1", True, True, None),  # 6to4 of 93.184.216.34
    ("2002:7f00:1::1", False, False, "loopback via 6to4"),
    ("2002:a9fe:a9fe::1", False, False, "link-local via 6to4"),
    ("2002:c0a8:101::1", False, False, "private via 6to4"),
]


@pytest.mark.parametrize(("addr", "strict", "relaxed", "reason"), CASES, ids=[c[0] for c in CASES])
def test_address_policy(addr: str, strict: bool, relaxed: bool, reason: str | None) -> None:
    ip = ipaddress.ip_address(addr)
    assert (refusal_reason(ip, allow_private=False) is None) is strict
    assert (refusal_reason(ip, allow_private=True) is None) is relaxed
    assert refusal_reason(ip, allow_private=False) == reason


@pytest.mark.parametrize(
    ("host", "allow_private", "refused"),
    [
        ("example.com", False, False),  # names are the resolver's job
        ("localhost", False, False),
        ("93.184.216.34", False, False),
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("::1", False, True),
        ("::ffff:7f00:1", False, True),
        ("169.254.169.254", True, True),
        ("0.0.0.0", True, True),
        # numeric forms aiohttp would treat as literals but that are not canonical addresses
        ("2130706433", True, True),
        ("127.1", True, True),
        ("127.0.0.1.", True, True),
        ("fe80::1%eth0", True, True),
    ],
)
def test_check_host_literal(host: str, allow_private: bool, refused: bool) -> None:
    if refused:
        with pytest.raises(BlockedAddressError):
            check_host_literal(host, allow_private)
    else:
        check_host_literal(host, allow_private)


async def test_resolver_passes_allowed_answers_through() -> None:
    inner = StaticResolver(default=["93.184.216.34", "2606:4700:4700::1111"])
    resolver = GuardedResolver(allow_private=False, inner=inner)
    results = await resolver.resolve("example.test", 443)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700:4700::1111"]
    await resolver.close()
    assert inner.closed


@pytest.mark.parametrize(
    ("addrs", "allow_private", "bad_ip", "reason"),
    [
        (["127.0.0.1"], False, "127.0.0.1", "loopback"),
        (["10.0.0.5"], False, "10.0.0.5", "private"),
        # one bad address among good ones refuses the whole answer
        (["93.184.216.34", "10.0.0.5"], False, "10.0.0.5", "private"),
        (["127.0.0.1", "169.254.169.254"], True, "169.254.169.254", "link-local"),
        (["::ffff:169.254.169.254"], True, "::ffff:a9fe:a9fe", "link-local"),
        (["fe80::1%2"], True, "fe80::1%2", "link-local"),
        (["not-an-ip"], True, "not-an-ip", "unparseable address"),
    ],
)
async def test_resolver_refuses_any_bad_address(
    addrs: list[str], allow_private: bool, bad_ip: str, reason: str
) -> None:
    resolver = GuardedResolver(allow_private=allow_private, inner=StaticResolver(default=addrs))
    with pytest.raises(BlockedAddressError) as info:
        await resolver.resolve("evil.test", 80)
    assert info.value.host == "evil.test"
    assert info.value.ip == bad_ip
    assert info.value.reason == reason
    assert f"refused address {bad_ip} ({reason})" in str(info.value)
