"""Real parts for the integration, end-to-end and fault tests.

One SecantusDB server and one RabbitMQ topology (under a unique prefix) per test session; tests isolate
from each other through their own request ids, or their own prefix and database where they need it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from localrun.broker import ensure_rabbitmq
from localrun.supervisor import SERVICES, Supervisor, free_port, secantus_argv, secantus_url, wait_for_port
from shared.bus import EventBus
from shared.mongo import Mongo, connect_mongo
from shared.repository import MongoRequestRepository
from shared.settings import Settings

AMQP_URL = os.environ.get("IMAGEPIPE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Every bus prefix of this session starts with this, so what it leaves in the broker is told apart from what
# other runs on the same broker have declared.
SESSION_PREFIX = f"test-{uuid.uuid4().hex[:6]}-"


@pytest.fixture(scope="session", autouse=True)
def rabbitmq() -> Iterator[None]:
    """The machine's RabbitMQ, started if it is down (as `make run` does). Every test deletes the queues it
    declared (its topology, its spies): after the session, none of ours is left."""
    ensure_rabbitmq(AMQP_URL)
    yield
    left = [name for name in broker_queues() if name.startswith(SESSION_PREFIX)]
    assert not left, f"the tests left {len(left)} queues in the broker: {sorted(left)[:20]}"


def broker_queues() -> list[str]:
    """The names of the machine broker's queues, as `rabbitmqctl list_queues name` shows them."""
    if AMQP_URL != "amqp://guest:guest@127.0.0.1:5672/" or shutil.which("rabbitmqctl") is None:
        return []  # another broker: not ours to list
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "--quiet", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return listed.stdout.split()


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="imagepipe-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def secantus(tmp_root: Path) -> Iterator[str]:
    """A real MongoDB-wire-protocol server for the whole session."""
    supervisor = Supervisor(dict(os.environ), log_dir=tmp_root, restart=False)
    port = free_port()
    supervisor.start("secantusdb", secantus_argv(tmp_root / "db", port))
    wait_for_port("127.0.0.1", port, 60, "SecantusDB")
    yield secantus_url(port)
    supervisor.stop_all(grace=10)


def make_settings(mongo_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings isolated by a unique bus prefix and database name, with test-sized delays."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "amqp_url": AMQP_URL,
        "bus_prefix": f"{SESSION_PREFIX}{tag}",
        "mongo_url": mongo_url,
        "mongo_db": f"test_{tag}",
        "data_dir": data_dir,
        "retry_delays_ms": [200, 400],
        "fetch_allow_private": True,
        "fetch_backoff": 0.05,
        "fetch_attempts": 2,
        "fetch_connect_timeout": 2.0,
        "fetch_read_timeout": 3.0,
        "fetch_total_timeout": 5.0,
        "notify_backoff": 0.05,
        "notify_attempts": 4,
        "notify_timeout": 3.0,
        "codec_workers": 2,
        "shutdown_grace": 5.0,
        "log_json": True,
        "status_cache_seconds": 0.0,  # tests read their own writes; the cache has tests of its own
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPIPE_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if name in ("api_keys",):
            value = [k.get_secret_value() for k in getattr(settings, name)]
        if isinstance(value, list | dict | bool):
            import json

            value = json.dumps(value)
        env[f"IMAGEPIPE_{name.upper()}"] = str(value)
    for secret in ("webhook_secret", "smtp_password"):
        s = getattr(settings, secret)
        if s is not None:
            env[f"IMAGEPIPE_{secret.upper()}"] = s.get_secret_value()
    return env


async def delete_topology(settings: Settings) -> None:
    topology = EventBus(settings).topology
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for service in SERVICES:
            for name in topology.queues(service):
                await channel.queue_delete(name)
        await channel.exchange_delete(topology.exchange)


@pytest.fixture
async def settings(secantus: str, tmp_path: Path) -> AsyncIterator[Settings]:
    s = make_settings(secantus, tmp_path)
    yield s
    await delete_topology(s)


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[Mongo]:
    mongo = connect_mongo(settings)
    await mongo.ensure_indexes()
    yield mongo
    await mongo.drop()
    await mongo.close()


@pytest.fixture
def repo(mongo: Mongo) -> MongoRequestRepository:
    return MongoRequestRepository(mongo)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[EventBus]:
    bus = EventBus(settings)
    await bus.connect()
    yield bus
    await bus.close()


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail with its last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s; last value: {last!r}")
