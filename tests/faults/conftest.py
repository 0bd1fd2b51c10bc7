"""Fault-injection fixtures: a fresh stack per test, batches of real images, exact read-model checks.

Every test gets its own bus prefix and database, so a fault in one test (a parked message, a half-written
request) cannot leak into the next. On failure, the services' logs are printed with the test's output.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest

from localrun.samples import photo
from localrun.supervisor import SERVICES
from shared.bus import Topology
from shared.events import RequestCompleted
from shared.mongo import Doc, Mongo, connect_mongo
from shared.repository import image_key
from shared.settings import Settings
from tests.conftest import delete_topology, eventually, make_settings
from tests.origin import Origin
from tests.private_broker import PrivateBroker
from tests.private_broker import available as private_broker_available
from tests.stack import Stack, start_stack

BATCH = 200
URLS_PER_ROW = 2
MISSING_EVERY = 40  # every 40th image is a 404 at the origin: a FAILED outcome the checks expect
COMPRESSED, FAILED = "COMPRESSED", "FAILED"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's report on the test, so fixtures can tell in teardown whether it failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


# --- the batch --------------------------------------------------------------------------------------------
@cache
def small_photo(seed: int) -> bytes:
    return photo(96, 96, seed)


@dataclass
class Batch:
    csv_text: str
    expected: list[tuple[str, str]]  # per image index: (url, expected status)

    @property
    def size(self) -> int:
        return len(self.expected)

    @property
    def compressed(self) -> int:
        return sum(status == COMPRESSED for _, status in self.expected)

    @property
    def failed(self) -> int:
        return self.size - self.compressed


def make_batch(
    origin: Origin, size: int = BATCH, urls_per_row: int = URLS_PER_ROW, delay: float = 0.0, tag: str = "b"
) -> Batch:
    """`size` distinct URLs on the origin, `urls_per_row` to a product; every MISSING_EVERY-th is a 404.
    A `delay` (seconds per fetch) stretches the batch so that a fault lands in its middle."""
    expected: list[tuple[str, str]] = []
    for i in range(size):
        name = f"{tag}-{i:05d}.jpg"
        if i % MISSING_EVERY == MISSING_EVERY - 1:
            expected.append((origin.url(name), FAILED))
        else:
            origin.images[name] = small_photo(i % 97)
            if delay:
                origin.delay[name] = delay
            expected.append((origin.url(name), COMPRESSED))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for row, start in enumerate(range(0, size, urls_per_row)):
        urls = [url for url, _ in expected[start : start + urls_per_row]]
        writer.writerow([str(row + 1), f"Product {row + 1}", ", ".join(urls)])
    return Batch(out.getvalue(), expected)


async def outcomes_recorded(mongo: Mongo, request_id: str) -> int:
    return await mongo.images.count_documents({"request_id": request_id})


async def assert_exact(mongo: Mongo, request_id: str, batch: Batch, outputs_stored: bool = True) -> Doc:
    """The read model, image by image: one outcome per index with the right status, counters that equal
    those outcomes, a stored output for every compressed image, and the request COMPLETED."""
    request = await mongo.requests.find_one({"_id": request_id})
    assert request is not None
    outcomes = [doc async for doc in mongo.images.find({"request_id": request_id})]
    per_index = Counter(doc["index"] for doc in outcomes)
    problems = [f"index {i} has {n} outcomes" for i, n in per_index.items() if n != 1]
    problems += [f"index {i} has no outcome" for i in range(batch.size) if i not in per_index]
    problems += [f"unexpected index {i}" for i in per_index if not 0 <= i < batch.size]
    by_index = {doc["index"]: doc for doc in outcomes}
    for i, (url, status) in enumerate(batch.expected):
        doc = by_index.get(i)
        if doc is None:
            continue
        if doc["_id"] != image_key(request_id, i) or doc["url"] != url or doc["status"] != status:
            problems.append(f"index {i}: {doc['status']} {doc['url']}; expected {status} {url}")
    assert not problems, f"{len(problems)} problems, first ones: {problems[:20]}"

    statuses = Counter(doc["status"] for doc in outcomes)
    assert request["status"] == "COMPLETED", request["status"]
    assert request["total_images"] == batch.size
    assert (request["no_img_compressed"], request["no_img_failed"]) == (
        statuses[COMPRESSED],
        statuses[FAILED],
    )
    assert (statuses[COMPRESSED], statuses[FAILED]) == (batch.compressed, batch.failed)
    assert request["bytes_in"] == sum(d.get("input_bytes", 0) for d in outcomes)
    assert request["bytes_out"] == sum(d.get("output_bytes", 0) for d in outcomes)
    assert "completion_pending" not in request, "the completion was never marked published"

    if not outputs_stored:
        return request
    # Nothing lost on the way to storage either: each compressed outcome points at its stored output.
    file_ids = {d["file_id"] for d in outcomes if d["status"] == COMPRESSED}
    stored = {
        d["_id"] async for d in mongo.files.find({"_id": {"$in": sorted(file_ids)}}, projection={"_id": 1})
    }
    assert stored == file_ids, f"{len(file_ids - stored)} compressed images have no stored output"
    return request


# --- the stack --------------------------------------------------------------------------------------------
ROUTINE = ('"event": "http_request"', '"event": "image_compressed"', '"event": "duplicate_outcome')


def service_logs(log_dir: Path, tail: int = 30, problems: int = 40) -> str:
    """Each service's warnings and errors, then its last lines, leaving out the routine per-image ones."""
    parts = []
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        bad = [line for line in lines if '"level": "warning"' in line or '"level": "error"' in line]
        bad += [line for line in lines if line.startswith(("Traceback", "  File", "    "))]
        last = [line for line in lines if not any(r in line for r in ROUTINE)][-tail:]
        parts.append(f"===== {path.name}: {len(lines)} lines, {len(bad)} warnings/errors =====")
        parts += [*bad[:problems], f"----- {path.name}: last {len(last)} non-routine lines -----", *last]
    return "\n".join(parts)


def log_lines(stack: Stack, process: str, event: str) -> list[str]:
    assert stack.supervisor.log_dir is not None
    path = stack.supervisor.log_dir / f"{process}.log"
    return [line for line in path.read_text(errors="replace").splitlines() if f'"event": "{event}"' in line]


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start(secantus: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[StackFactory]:
    """`await start(compressors=2, mongo_url=None, services=SERVICES, **settings)`: a whole stack of its
    own (or the `services` named), torn down after."""
    stacks: list[Stack] = []

    async def start_fault_stack(
        compressors: int = 2,
        mongo_url: str | None = None,
        services: tuple[str, ...] = SERVICES,
        **overrides: Any,
    ) -> Stack:
        log_dir = tmp_path / f"stack{len(stacks)}"
        log_dir.mkdir()
        settings = make_settings(mongo_url or secantus, log_dir, **overrides)
        stack = await start_stack(settings, log_dir, compressors=compressors, services=services)
        stacks.append(stack)
        return stack

    yield start_fault_stack
    for stack in stacks:
        await stack.close()
        if failed(request):
            assert stack.supervisor.log_dir is not None
            print(service_logs(stack.supervisor.log_dir))
        await delete_topology(stack.settings)
        mongo = connect_mongo(stack.settings)
        await mongo.drop()
        await mongo.close()


@pytest.fixture
async def stack(start: StackFactory) -> Stack:
    return await start()


@pytest.fixture
async def mongo(stack: Stack) -> AsyncIterator[Mongo]:
    mongo = connect_mongo(stack.settings)
    yield mongo
    await mongo.close()


async def run_batch(stack: Stack, batch: Batch, **fields: str) -> str:
    accepted = await stack.upload(batch.csv_text, **fields)
    assert accepted["images"] == batch.size
    return str(accepted["request_id"])


async def wait_completed(stack: Stack, mongo: Mongo, request_id: str, timeout: float = 60) -> None:
    """Until GET /status says COMPLETED, restarting what died meanwhile (as `make run` does) and riding
    out an API that is restarting; on timeout, says how far the request got."""

    async def completed() -> bool:
        stack.supervisor.poll()
        try:
            return (await stack.status(request_id))["status"] == "COMPLETED"
        except (httpx.TransportError, AssertionError):  # restarting, or answering 503 in an outage
            return False

    try:
        await eventually(completed, timeout=timeout, interval=0.25)
    except AssertionError:
        request = await mongo.requests.find_one({"_id": request_id}, projection={"rows": 0, "failures": 0})
        recorded = await outcomes_recorded(mongo, request_id)
        raise AssertionError(
            f"not completed in {timeout} s: {recorded} outcomes; request: {request}"
        ) from None


async def wait_for_outcomes(mongo: Mongo, request_id: str, at_least: int, timeout: float = 30) -> None:
    """Until some of the batch is done: the moment a fault hits mid-batch."""

    async def enough() -> bool:
        return await outcomes_recorded(mongo, request_id) >= at_least

    await eventually(enough, timeout=timeout, interval=0.05)


# --- spying on the bus ------------------------------------------------------------------------------------
class CompletionSpy:
    """A durable queue of our own bound to `request.completed`: every RequestCompleted published.

    It is read by fetching without acknowledging and then closing the channel, which puts everything
    back: each read sees all messages so far. A fresh connection per read survives broker restarts.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = settings.amqp_url
        self.exchange = f"{settings.bus_prefix}.events"
        self.queue = f"{settings.bus_prefix}.spy.completed"

    async def bind(self) -> None:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.queue, durable=True)
            await queue.bind(exchange, routing_key=RequestCompleted.routing_key)

    async def received(self, request_id: str | None = None) -> list[RequestCompleted]:
        events = []
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            queue = await channel.get_queue(self.queue)
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                events.append(RequestCompleted.model_validate_json(message.body))
        return [e for e in events if request_id is None or e.request_id == request_id]

    async def delete(self) -> None:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(self.queue)


@pytest.fixture
async def spy(stack: Stack) -> AsyncIterator[CompletionSpy]:
    spy = CompletionSpy(stack.settings)
    await spy.bind()
    yield spy
    await spy.delete()


async def assert_notified_once(
    stack: Stack, spy: CompletionSpy, request_id: str, settle: float = 1.0
) -> None:
    """Exactly one RequestCompleted on the bus and exactly one email, also after a moment's wait."""
    await eventually(lambda: stack.smtp.for_request(request_id), timeout=30)
    await asyncio.sleep(settle)  # a duplicate would be right behind the first
    completions = await spy.received(request_id)
    assert len(completions) == 1, f"{len(completions)} RequestCompleted events: {completions}"
    assert len(stack.smtp.for_request(request_id)) == 1


# --- the broker -------------------------------------------------------------------------------------------
class ChokingProxy:
    """A TCP proxy to the broker that lets clients send `budget` bytes, then swallows the rest until opened
    (and then closes those connections; new ones pass freely).

    A publisher behind it gets its first messages to the broker and then waits for confirms that never
    come: a publication stopped halfway, at a point the test chooses by size rather than by timing.
    """

    def __init__(self, amqp_url: str, budget: int) -> None:
        target = urlsplit(amqp_url)
        self.host, self.port = target.hostname or "127.0.0.1", target.port or 5672
        self.budget: int | None = budget
        self.sent = 0
        self._opened = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def open(self) -> None:
        self.budget = None
        self._opened.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection(self.host, self.port)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.budget is not None and self.sent + len(data) > self.budget:
                    fits = max(0, self.budget - self.sent)
                    broker_w.write(data[:fits])
                    self.sent += fits
                    # Choked for good: the rest never arrives, and the connection ends when we open up.
                    await self._opened.wait()
                    return
                broker_w.write(data)
                self.sent += len(data)
                await broker_w.drain()

        async def downstream() -> None:
            while data := await broker_r.read(65536):
                client_w.write(data)
                await client_w.drain()

        try:
            await asyncio.wait(
                [asyncio.create_task(upstream()), asyncio.create_task(downstream())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        except ConnectionError:
            pass
        finally:
            for writer in (broker_w, client_w):
                writer.close()


async def queue_depths(
    settings: Settings, services: Iterable[str] = ("compressor", "status", "notifier")
) -> dict[str, int]:
    """Messages waiting (ready) in every queue of `services`, dead-letter and retry queues included.

    Asked of each queue directly: `rabbitmqctl list_queues` reports quorum queues up to 5 s late.
    """
    t = Topology(settings.bus_prefix, tuple(settings.retry_delays_ms))
    names = [name for service in services for name in t.queues(service)]
    depths = {}
    async with await aio_pika.connect(settings.amqp_url) as connection:
        channel = await connection.channel()
        for name in names:
            declared = await channel.declare_queue(name, passive=True)
            depths[name] = declared.declaration_result.message_count or 0
    return depths


async def assert_drained(
    stack: Stack, services: tuple[str, ...] = ("compressor", "status", "notifier")
) -> None:
    """Nothing waiting to be handled or retried, and nothing parked in a dead-letter queue."""

    async def drained() -> bool:
        return not any((await queue_depths(stack.settings, services)).values())

    try:
        await eventually(drained, timeout=20, interval=0.2)
    except AssertionError:
        left = {name: n for name, n in (await queue_depths(stack.settings, services)).items() if n}
        raise AssertionError(f"messages left over: {left}") from None


@pytest.fixture(scope="session")
def private_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node of our own, to stop and start without disturbing anyone else's."""
    if not private_broker_available():
        pytest.skip("rabbitmq-server is not installed; this test restarts a RabbitMQ node")
    broker = PrivateBroker()
    broker.start()
    yield broker
    broker.stop()
