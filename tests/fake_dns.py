"""Test DNS for the address guard: fixed answers, no network."""

from __future__ import annotations

import socket
from collections import Counter

from aiohttp.abc import AbstractResolver, ResolveResult


class StaticResolver(AbstractResolver):
    """Answers per name (or `default` for any name), NXDOMAIN otherwise; counts lookups."""

    def __init__(
        self, names: dict[str, list[str]] | None = None, *, default: list[str] | None = None
    ) -> None:
        self.names = names or {}
        self.default = default
        self.lookups: Counter[str] = Counter()
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups[host] += 1
        addresses = self.names.get(host, self.default)
        if addresses is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        self.closed = True
