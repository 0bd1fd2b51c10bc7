"""GET /status/{id}/events and API keys: EventSource cannot send headers, so this route alone also takes
the key as `?api_key=`; every other route still refuses a key in the URL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from shared.mongo import Mongo
from shared.settings import Settings
from tests.integration.test_api import client_for

KEY = "k-" + "e" * 30
UNKNOWN = "u" * 22


@pytest.fixture
async def secured(settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings.model_copy(update={"api_keys": [SecretStr(KEY)]})):
        yield client


async def test_the_events_route_takes_the_key_as_a_header_or_a_query_parameter(
    secured: httpx.AsyncClient,
) -> None:
    assert (await secured.get(f"/status/{UNKNOWN}/events")).status_code == 401
    assert (await secured.get(f"/status/{UNKNOWN}/events", params={"api_key": "wrong"})).status_code == 401
    # Authorised, then simply unknown: a plain 404 answer in the one error shape, not a stream.
    by_query = await secured.get(f"/status/{UNKNOWN}/events", params={"api_key": KEY})
    assert by_query.status_code == 404 and by_query.json()["error"].startswith("unknown request_id")
    assert (await secured.get(f"/status/{UNKNOWN}/events", headers={"X-API-Key": KEY})).status_code == 404


async def test_no_other_route_takes_the_key_from_the_url(secured: httpx.AsyncClient) -> None:
    for path in (f"/status/{UNKNOWN}", f"/output/{UNKNOWN}"):
        assert (await secured.get(path, params={"api_key": KEY})).status_code == 401, path
    upload = await secured.post(
        "/upload",
        params={"api_key": KEY},
        files={"file": ("p.csv", b"x", "text/csv")},
        data={"email": "a@b.co"},
    )
    assert upload.status_code == 401


async def test_the_page_and_its_assets_need_no_key(secured: httpx.AsyncClient) -> None:
    for path in ("/", f"/r/{UNKNOWN}", "/static/app.js", "/static/app.css", "/docs", "/openapi.json"):
        response = await secured.get(path)
        assert response.status_code == 200, path
    page = await secured.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    docs = (await secured.get("/docs")).text
    assert "cdn" not in docs.lower()  # Swagger UI comes from this server: /docs works offline
    assert (await secured.get(docs.split('<script src="')[1].split('"')[0])).status_code == 200
