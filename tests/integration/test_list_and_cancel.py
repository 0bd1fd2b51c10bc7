"""GET /requests and POST /requests/{id}/cancel against the real database and broker: ownership, paging
from the index, and a cancel settling through the real bus (compressor and status handlers in process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.compressor.handler import ROUTES as COMPRESSOR_ROUTES
from services.status.projection import ROUTES as STATUS_ROUTES
from services.status.projection import StatusProjection
from services.upload.deps import owner_of
from shared.bus import EventBus, bind
from shared.events import RequestCompleted
from shared.mongo import Mongo
from shared.repository import LIST_ORDER, MongoRequestRepository
from shared.settings import Settings
from tests.conftest import eventually
from tests.fakes import an_upload, watching_compressor
from tests.integration.test_api import client_for

KEY_A, KEY_B = "key-a-" + "a" * 26, "key-b-" + "b" * 26


def csv_of(images: int) -> bytes:
    rows = "".join(f"{i},P{i},http://origin.test/{i}.jpg\n" for i in range(images))
    return ("S. No.,Product Name,Input Image Urls\n" + rows).encode()


async def upload(api: httpx.AsyncClient, images: int = 1, key: str | None = None) -> str:
    response = await api.post(
        "/upload",
        files={"file": ("p.csv", csv_of(images), "text/csv")},
        data={"email": "a@example.com"},
        headers={"X-API-Key": key} if key else {},
    )
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


@pytest.fixture
async def secured(settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
    keyed = settings.model_copy(update={"api_keys": [SecretStr(KEY_A), SecretStr(KEY_B)]})
    async for client in client_for(keyed):
        yield client


async def test_each_key_lists_only_its_own_requests_newest_first_page_by_page(
    secured: httpx.AsyncClient, mongo: Mongo
) -> None:
    mine = [await upload(secured, key=KEY_A) for _ in range(5)]
    theirs = await upload(secured, key=KEY_B)
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await secured.get("/requests", params=params, headers={"X-API-Key": KEY_A})).json()
        seen += page["requests"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert [r["request_id"] for r in seen] == mine[::-1]
    first = seen[0]
    assert first["status"] == "PENDING" and first["total_images"] == 1 and first["progress"] == 0.0
    assert set(first) >= {
        "no_img_compressed",
        "no_img_failed",
        "no_img_skipped",
        "created_at",
        "completed_at",
    }
    other = (await secured.get("/requests", headers={"Authorization": f"Bearer {KEY_B}"})).json()
    assert [r["request_id"] for r in other["requests"]] == [theirs] and other["next_cursor"] is None
    assert (await secured.get("/requests")).status_code == 401
    stored = await mongo.requests.find_one({"_id": theirs})
    assert stored is not None and stored["owner"] == owner_of(KEY_B) and KEY_B not in str(stored)


async def test_another_keys_request_is_a_404_on_every_route_that_names_it(secured: httpx.AsyncClient) -> None:
    request_id = await upload(secured, key=KEY_A)
    b = {"X-API-Key": KEY_B}
    routes = [
        secured.get(f"/status/{request_id}", headers=b),
        secured.get(f"/status/{request_id}/events", params={"api_key": KEY_B}),
        secured.get(f"/output/{request_id}", headers=b),
        secured.post(f"/requests/{request_id}/cancel", headers=b),
        secured.delete(f"/requests/{request_id}", headers=b),
        secured.post("/webhook-completed", json={"request_id": request_id}, headers=b),
    ]
    for answer in await asyncio.gather(*routes):
        assert answer.status_code == 404, (answer.request.url, answer.text)
        assert answer.json()["error"] == f"unknown request_id {request_id!r}"  # as if it did not exist
    assert (await secured.get(f"/status/{request_id}", headers={"X-API-Key": KEY_A})).status_code == 200
    doc = await secured.get(f"/status/{request_id}", headers=b)
    assert doc.status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "W10"}, "cursor"),  # base64 of "[]"
        ({"cursor": "Wzk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5LCAieCJd"}, "cursor"),  # [huge, "x"]
        ({"cursor": "x" * 500}, "cursor"),
        ({"limit": 10**30}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
    ],
)
async def test_a_bad_cursor_or_limit_is_a_400_naming_it(
    api: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    answer = await api.get("/requests", params=params)
    assert answer.status_code == 400, answer.text
    assert [p["field"] for p in answer.json()["problems"]] == [field]


async def test_the_list_is_served_by_an_index(mongo: Mongo, repo: MongoRequestRepository) -> None:
    for n in range(3):
        await repo.create_request(f"req-{n}", an_upload(), owner="o1")
    plan = (
        await mongo.requests.find({"owner": "o1", "created_at": {"$lte": datetime.now(UTC)}})
        .sort(LIST_ORDER)
        .explain()
    )
    assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"]), plan


async def test_cancel_answers_with_the_state_and_is_idempotent_and_a_finished_request_is_a_409(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    request_id = await upload(api, images=3)
    first = await api.post(f"/requests/{request_id}/cancel")
    assert first.status_code == 202 and first.json()["status"] == "CANCELLING"
    again = await api.post(f"/requests/{request_id}/cancel")
    assert again.status_code in (200, 202) and again.json()["status"] in ("CANCELLING", "CANCELLED")
    done = await upload(api)
    await mongo.requests.update_one({"_id": done}, {"$set": {"status": "COMPLETED"}})
    refused = await api.post(f"/requests/{done}/cancel")
    assert refused.status_code == 409 and "complete" in refused.json()["error"]
    assert (await api.post("/requests/" + "z" * 22 + "/cancel")).status_code == 404


@pytest.fixture
async def api(settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings.model_copy(update={"outbox_window": 4})):
        yield client


class SlowCountingFetcher:
    """An origin that takes its time, and counts what was fetched."""

    def __init__(self) -> None:
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        await asyncio.sleep(0.3)
        return b"image bytes"


class Completions:
    """Stands in for the notifier: the completions announced."""

    def __init__(self) -> None:
        self.events: list[RequestCompleted] = []

    async def completed(self, event: RequestCompleted) -> None:
        self.events.append(event)


@pytest.fixture
async def completions() -> Completions:
    return Completions()


@pytest.fixture
async def workers(
    settings: Settings, mongo: Mongo, completions: Completions
) -> AsyncIterator[SlowCountingFetcher]:
    """A compressor, the status service and a notifier's queue on the real bus, in this process."""
    bus = EventBus(settings)
    await bus.connect()
    repo = MongoRequestRepository(mongo)
    fetcher = SlowCountingFetcher()
    compressor = watching_compressor(bus, fetcher, repo, per_host=8, ttl=0.2)
    projection = StatusProjection(repo, bus)
    await bus.subscribe("status", bind(STATUS_ROUTES, projection), prefetch=32)
    await bus.subscribe("compressor", bind(COMPRESSOR_ROUTES, compressor), prefetch=2)
    await bus.subscribe("notifier", bind({RequestCompleted: Completions.completed}, completions), prefetch=8)
    sweeper = asyncio.create_task(projection.sweep_forever(interval=0.2))
    yield fetcher
    sweeper.cancel()
    await bus.close()


async def test_a_cancel_mid_batch_skips_the_rest_unfetched_and_ends_cancelled_with_a_partial_csv(
    api: httpx.AsyncClient, workers: SlowCountingFetcher, completions: Completions
) -> None:
    images = 40
    request_id = await upload(api, images=images)
    await eventually(lambda: len(workers.fetched) >= 2)
    assert (await api.post(f"/requests/{request_id}/cancel")).status_code == 202

    async def final() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/status/{request_id}", params={"view": "summary"})).json()
        return body if body["status"] == "CANCELLED" else None

    status = await eventually(final)
    done = status["no_img_compressed"] + status["no_img_failed"]
    assert status["no_img_skipped"] > 0 and done + status["no_img_skipped"] == images
    csv = (await api.get(f"/output/{request_id}")).content.decode("utf-8-sig").splitlines()[1:]
    skipped = [line for line in csv if line.endswith("SKIPPED: cancelled before it was started")]
    assert len(skipped) == status["no_img_skipped"] and len(csv) == images
    never_fetched = {line.split(",")[2] for line in skipped}
    assert not never_fetched & set(workers.fetched), "a skipped image was fetched"
    assert len(set(workers.fetched)) == done
    (announced,) = await eventually(lambda: completions.events)
    assert (announced.status, announced.skipped) == ("CANCELLED", status["no_img_skipped"])


async def test_a_100000_image_cancel_settles_without_a_message_per_image(
    api: httpx.AsyncClient, workers: SlowCountingFetcher, mongo: Mongo
) -> None:
    images = 100_000
    request_id = await upload(api, images=images)
    await eventually(lambda: len(workers.fetched) >= 1, timeout=60)
    started = time.monotonic()
    assert (await api.post(f"/requests/{request_id}/cancel")).status_code == 202
    doc = await eventually(
        lambda: mongo.requests.find_one({"_id": request_id, "status": "CANCELLED"}), timeout=120
    )
    settled_s = time.monotonic() - started
    print(f"\n100,000-image cancel settled in {settled_s:.2f} s ({doc['no_img_skipped']} skipped in bulk)")
    assert doc["no_img_skipped"] >= images - 8  # the window (4), at most once more in flight
    assert await mongo.images.count_documents({"request_id": request_id}) < 10  # no document per skip
    started = time.monotonic()
    csv = (await api.get(f"/output/{request_id}")).content.decode("utf-8-sig").splitlines()
    print(f"its output CSV: {len(csv) - 1} rows in {time.monotonic() - started:.1f} s")
    assert len(csv) == 1 + images
    assert (
        sum(line.endswith(",SKIPPED: cancelled before it was started") for line in csv)
        == doc["no_img_skipped"]
    )


async def test_paging_lists_every_request_once_however_far_apart_or_close_in_time(
    mongo: Mongo, repo: MongoRequestRepository
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ages = [timedelta(0)] * 4 + [timedelta(seconds=30), timedelta(hours=3), timedelta(days=40)]
    ages += [timedelta(days=400)] * 2  # beyond every span: found by the unbounded look
    for n, age in enumerate(ages):
        await repo.create_request(f"req-{n:02d}", an_upload(), owner="o1")
        await mongo.requests.update_one(
            {"_id": f"req-{n:02d}"}, {"$set": {"created_at": now - age, "status": "PENDING"}}
        )
    await repo.create_request("req-receiving", an_upload(), owner="o1")  # not accepted: never listed
    await repo.create_request("req-other", an_upload(), owner="o2")
    listed, cursor = [], None
    for _ in range(len(ages)):
        page = await repo.list_requests("o1", 3, cursor)
        listed += [r["_id"] for r in page["requests"]]
        if (cursor := page["next_cursor"]) is None:
            break
    # Newest first; requests of the same millisecond by id, descending.
    assert listed == [
        "req-03",
        "req-02",
        "req-01",
        "req-00",
        "req-04",
        "req-05",
        "req-06",
        "req-08",
        "req-07",
    ]
