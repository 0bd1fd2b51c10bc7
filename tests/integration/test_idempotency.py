"""Idempotency-Key on POST /upload, in process against the real database and broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from services.upload.idempotency import KEY_TTL
from services.upload.intake import ABANDONED_AFTER
from shared.mongo import Mongo
from shared.repository import MongoRequestRepository
from shared.settings import Settings
from tests.integration.test_api import GOOD_CSV, client_for

OTHER_CSV = GOOD_CSV.replace("SKU1", "SKU2")
BAD_CSV = "S. No.,Product Name,Input Image Urls\n1,SKU1,not-a-url\n"


@pytest.fixture
async def api(settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings):
        yield client


async def upload(api: httpx.AsyncClient, key: str | None, csv: str = GOOD_CSV, **data: str) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    headers.update({k: v for k, v in data.items() if k == "X-API-Key"})
    fields = {"email": "a@example.com", **{k: v for k, v in data.items() if k != "X-API-Key"}}
    return await api.post(
        "/upload", files={"file": ("p.csv", csv.encode(), "text/csv")}, data=fields, headers=headers
    )


async def test_the_same_key_and_body_answer_the_same_and_start_nothing_new(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    first = await upload(api, "key-1")
    again = await upload(api, "key-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert await mongo.requests.count_documents({}) == 1
    # Without a key, or with another, the same body is a new upload.
    assert (await upload(api, None)).json()["request_id"] != first.json()["request_id"]
    assert (await upload(api, "key-2")).json()["request_id"] != first.json()["request_id"]
    assert await mongo.requests.count_documents({}) == 3


@pytest.mark.parametrize(
    "change", [{"csv": OTHER_CSV}, {"email": "b@example.com"}, {"format": "webp"}], ids=str
)
async def test_the_same_key_with_another_body_is_a_422_naming_the_header(
    api: httpx.AsyncClient, mongo: Mongo, change: dict[str, str]
) -> None:
    assert (await upload(api, "key-1")).status_code == 202
    reused = await upload(api, "key-1", **change)
    assert reused.status_code == 422
    (found,) = reused.json()["problems"]
    assert found["field"] == "Idempotency-Key" and "different body" in found["reason"]
    assert await mongo.requests.count_documents({}) == 1


async def test_concurrent_duplicates_create_one_request(api: httpx.AsyncClient, mongo: Mongo) -> None:
    answers = await asyncio.gather(*(upload(api, "key-concurrent") for _ in range(6)))
    accepted = [a for a in answers if a.status_code == 202]
    assert {a.status_code for a in answers} <= {202, 409}
    assert len({a.json()["request_id"] for a in accepted}) == 1
    assert all(a.headers["retry-after"] for a in answers if a.status_code == 409)
    assert await mongo.requests.count_documents({}) == 1
    settled = await upload(api, "key-concurrent")
    assert settled.status_code == 202 and settled.json()["request_id"] == accepted[0].json()["request_id"]


async def test_a_key_whose_upload_was_rejected_can_be_used_again(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    rejected = await upload(api, "key-1", csv=BAD_CSV)
    assert rejected.status_code == 422 and rejected.json()["problems"][0]["row"] is not None
    assert (await upload(api, "key-1", csv=BAD_CSV)).status_code == 422  # checked again, not replayed
    fixed = await upload(api, "key-1", csv=GOOD_CSV)
    assert fixed.status_code == 202
    assert await mongo.idempotency_keys.count_documents({}) == 1


async def test_keys_are_the_callers_own_when_api_keys_are_on(settings: Settings, mongo: Mongo) -> None:
    keyed = settings.model_copy(update={"api_keys": [SecretStr("a" * 32), SecretStr("b" * 32)]})
    async for api in client_for(keyed):
        mine = await upload(api, "shared-key", **{"X-API-Key": "a" * 32})
        theirs = await upload(api, "shared-key", **{"X-API-Key": "b" * 32})
        again = await upload(api, "shared-key", **{"X-API-Key": "a" * 32})
        assert mine.status_code == theirs.status_code == again.status_code == 202
        assert mine.json()["request_id"] != theirs.json()["request_id"]
        assert again.json()["request_id"] == mine.json()["request_id"]
    stored = [doc["_id"] async for doc in mongo.idempotency_keys.find({})]
    assert all("a" * 32 not in key and "b" * 32 not in key for key in stored)  # a hash, never the key


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "caf\u00e9", "tab\there"], ids=repr)
async def test_a_malformed_key_is_a_400_naming_the_header(
    api: httpx.AsyncClient, mongo: Mongo, key: str
) -> None:
    response = await api.post(
        "/upload",
        files={"file": ("p.csv", GOOD_CSV.encode(), "text/csv")},
        data={"email": "a@example.com"},
        headers=[(b"Idempotency-Key", key.encode())],
    )
    assert response.status_code == 400
    assert response.json()["problems"][0]["field"] == "Idempotency-Key"
    assert await mongo.requests.count_documents({}) == 0


async def test_an_expired_key_starts_a_new_upload(api: httpx.AsyncClient, mongo: Mongo) -> None:
    first = (await upload(api, "key-1")).json()["request_id"]
    # As the key looks after 24 h, before the TTL monitor (about once a minute) has removed it.
    past = datetime.now(UTC) - timedelta(seconds=1)
    await mongo.idempotency_keys.update_many({}, {"$set": {"expires_at": past}})
    second = await upload(api, "key-1", csv=OTHER_CSV)  # even with another body: the old one is gone
    assert second.status_code == 202 and second.json()["request_id"] != first
    indexes = [i async for i in await mongo.idempotency_keys.list_indexes()]
    assert any(i.get("expireAfterSeconds") == 0 and "expires_at" in i["key"] for i in indexes)


async def test_a_key_held_by_an_upload_in_progress_is_a_409_until_it_is_abandoned(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    first = await upload(api, "key-1")
    held = await mongo.idempotency_keys.find_one({})
    assert held is not None
    # As if that upload were still storing its rows: no request document yet.
    await mongo.requests.delete_many({})
    busy = await upload(api, "key-1")
    assert busy.status_code == 409 and busy.headers["retry-after"]
    assert busy.json()["problems"][0]["field"] == "Idempotency-Key"
    # Its gateway died: after ABANDONED_AFTER the key is taken over.
    long_ago = datetime.now(UTC) - ABANDONED_AFTER - timedelta(seconds=1)
    await mongo.idempotency_keys.update_one({"_id": held["_id"]}, {"$set": {"claimed_at": long_ago}})
    retried = await upload(api, "key-1")
    assert retried.status_code == 202 and retried.json()["request_id"] != first.json()["request_id"]


async def test_a_webhook_secret_is_returned_once_and_again_only_in_a_replay(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    hook = {"webhook_url": "https://hooks.example.com/imagepipe"}
    first = (await upload(api, "key-1", **hook)).json()
    assert first["webhook_secret"].startswith("whsec_")
    assert (await upload(api, "key-1", **hook)).json()["webhook_secret"] == first["webhook_secret"]
    other = (await upload(api, None, **hook)).json()
    assert other["webhook_secret"] != first["webhook_secret"]  # each request its own
    status = await api.get(f"/status/{first['request_id']}")
    assert status.status_code == 200 and first["webhook_secret"] not in status.text
    assert "webhook_secret" not in (await upload(api, None)).json()  # no webhook, no secret


async def test_of_concurrent_claims_on_the_database_exactly_one_wins(repo: MongoRequestRepository) -> None:
    claims = await asyncio.gather(
        *(repo.claim_idempotency_key("owner", "k", "hash", f"request-{n:02d}", KEY_TTL) for n in range(10))
    )
    assert len({held.request_id for held in claims}) == 1
    winner = claims[0].request_id
    await repo.release_idempotency_key("owner", "k", "request-99")  # not its holder: changes nothing
    assert (
        await repo.claim_idempotency_key("owner", "k", "hash", "request-98", KEY_TTL)
    ).request_id == winner
    assert (
        await repo.claim_idempotency_key(None, "k", "hash", "request-97", KEY_TTL)
    ).request_id == "request-97"
    await repo.release_idempotency_key("owner", "k", winner)
    assert (
        await repo.claim_idempotency_key("owner", "k", "h2", "request-96", KEY_TTL)
    ).request_id == "request-96"
