"""Request body limits, against the real app served by uvicorn over a real socket.

A client streams a body of 1 GiB (chunked, so no Content-Length tells the server in advance); the server
must answer and close the connection after a few MiB at most, whatever the route, and auth must come
before the body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import uvicorn
from pydantic import SecretStr

from localrun.supervisor import free_port
from services.upload.app import create_app
from shared.mongo import Mongo
from shared.settings import Settings
from tests.conftest import eventually

GIB = 1 << 30
MIB = 1 << 20
PIECE = 256 * 1024


@pytest.fixture
async def server(settings: Settings, mongo: Mongo) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    secured = settings.model_copy(update={"port": port, "api_keys": [SecretStr("k" * 32)]})
    config = uvicorn.Config(
        create_app(secured), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, timeout=30, interval=0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    await task


async def stream_gib(
    address: tuple[str, int], path: str, headers: dict[str, str], prefix: bytes = b""
) -> tuple[int, int]:
    """POST a chunked 1 GiB body until the server answers or hangs up: (status, bytes the client sent)."""
    reader, writer = await asyncio.open_connection(*address)
    head = [f"POST {path} HTTP/1.1", f"Host: {address[0]}", "Transfer-Encoding: chunked"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    if prefix:
        writer.write(f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n")
    sent = 0
    piece = f"{PIECE:x}\r\n".encode() + b"a" * PIECE + b"\r\n"
    answer = asyncio.create_task(reader.readline())
    with contextlib.suppress(ConnectionError):
        while sent < GIB and not answer.done():
            writer.write(piece)
            await writer.drain()
            sent += PIECE
    status_line = await asyncio.wait_for(answer, 10)
    writer.close()
    return int(status_line.split()[1]), sent


async def test_a_gib_body_to_a_small_route_is_cut_off_after_a_few_mib(server: tuple[str, int]) -> None:
    status, sent = await stream_gib(server, "/webhook-completed", {"X-API-Key": "k" * 32})
    assert status == 413
    print(f"sent {sent / MIB:.1f} MiB")
    assert sent <= 8 * MIB, f"{sent / MIB:.1f} MiB went out before the server hung up"


async def test_a_gib_upload_is_cut_off_at_the_csv_limit(server: tuple[str, int], settings: Settings) -> None:
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\nS. No.,'
    headers = {"X-API-Key": "k" * 32, "Content-Type": "multipart/form-data; boundary=x"}
    status, sent = await stream_gib(server, "/upload", headers, prefix=part)
    assert status == 413
    print(f"sent {sent / MIB:.1f} MiB")
    assert sent <= settings.max_csv_bytes + 8 * MIB, f"{sent / MIB:.1f} MiB went out"


@pytest.mark.parametrize("path", ["/webhook-completed", "/upload"])
async def test_auth_comes_before_the_body_is_read(server: tuple[str, int], path: str) -> None:
    status, sent = await stream_gib(server, path, {"Content-Type": "application/json"})
    assert status == 401
    print(f"sent {sent / MIB:.1f} MiB")
    assert sent <= 8 * MIB, f"{sent / MIB:.1f} MiB went out before the 401"


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(
        f"POST /webhook-completed HTTP/1.1\r\nHost: x\r\nX-API-Key: {'k' * 32}\r\n"
        f"Content-Length: {GIB}\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    body = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection after it
    writer.close()
    assert int(status_line.split()[1]) == 413
    assert b"8192 bytes, the limit of POST /webhook-completed" in body


async def test_an_oversized_upload_names_the_setting_that_limits_it(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(
        f"POST /upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {'k' * 32}\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {GIB}\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    body = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert int(status_line.split()[1]) == 413
    assert b"the limit of POST /upload (IMAGEPIPE_MAX_CSV_BYTES: " in body
