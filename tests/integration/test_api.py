"""The API in process, against the real database and broker: rejections, limits, auth."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest
from pydantic import SecretStr

from services.upload import intake
from services.upload.app import create_app
from shared.events import NotificationRequested
from shared.image_options import DEFAULT_TARGET
from shared.mongo import Mongo, StorageUnavailable
from shared.repository import MongoRequestRepository, OutcomeDoc, OutcomeStatus, RequestDoc, RowDoc
from shared.settings import Settings
from shared.webhooks import signed_headers
from tests.fakes import an_upload

GOOD_CSV = 'S. No.,Product Name,Input Image Urls\n1,SKU1,"https://img.example.com/a.jpg, https://img.example.com/b.jpg"\n'


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.fixture
async def api(settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings):
        yield client


async def post_csv(api: httpx.AsyncClient, body: bytes | str, **data: Any) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return await api.post(
        "/upload", files={"file": ("p.csv", content, "text/csv")}, data={"email": "a@example.com", **data}
    )


async def test_accepted_upload_is_durable_and_visible_at_once(api: httpx.AsyncClient, mongo: Mongo) -> None:
    response = await post_csv(api, GOOD_CSV)
    assert response.status_code == 202
    body = response.json()
    assert (body["products"], body["images"]) == (1, 2)
    status = await api.get(f"/status/{body['request_id']}")
    assert status.status_code == 200 and status.json()["status"] == "PENDING"
    assert status.json()["product_details"][0]["output_urls"] == [None, None]


async def test_email_is_also_accepted_as_a_query_parameter(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/upload?email=q@example.com", files={"file": ("p.csv", GOOD_CSV.encode(), "text/csv")}
    )
    assert response.status_code == 202, response.text


async def test_request_ids_are_unguessable(api: httpx.AsyncClient) -> None:
    ids = [(await post_csv(api, GOOD_CSV)).json()["request_id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(len(i) >= 22 for i in ids)  # 128 random bits, URL-safe base64
    assert len({i[:6] for i in ids}) == 3  # no shared time-based prefix


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"email": "not-an-email"}, "email", "invalid email"),
        ({"email": "josé@example.com"}, "email", "before the @-sign are not supported"),
        ({"email": "用户@例子.广告"}, "email", "before the @-sign are not supported"),
        ({"email": ""}, "email", "required"),
        ({"webhook_url": "ftp://hooks.example.com/x"}, "webhook_url", "http(s)"),
        ({"webhook_url": "not a url"}, "webhook_url", "http(s)"),
    ],
)
async def test_invalid_form_fields_are_named(
    api: httpx.AsyncClient, data: dict[str, str], field: str, reason: str
) -> None:
    response = await post_csv(api, GOOD_CSV, **data)
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert [p["field"] for p in problems] == [field]
    assert reason in problems[0]["reason"]


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"quality": "0"}, "quality", "from 1 to 95, not 0"),
        ({"quality": "auto", "target": "200"}, "target", "from 10 to 95"),
        ({"target": "70"}, "target", "only with quality=auto"),
        ({"format": "bmp"}, "format", "one of jpeg, webp, avif"),
        ({"max_width": "-1"}, "max_width", "not -1"),
        ({"max_height": "big"}, "max_height", "whole number of pixels"),
    ],
)
async def test_invalid_image_options_are_named_and_nothing_is_stored(
    api: httpx.AsyncClient, mongo: Mongo, data: dict[str, str], field: str, reason: str
) -> None:
    response = await post_csv(api, GOOD_CSV, **data)
    assert response.status_code == 422
    (found,) = response.json()["problems"]
    assert found["field"] == field and reason in found["reason"]
    assert await mongo.requests.count_documents({}) == 0 and await mongo.rows.count_documents({}) == 0


async def test_every_bad_field_is_named_in_one_answer(api: httpx.AsyncClient) -> None:
    response = await post_csv(api, GOOD_CSV, email="nope", quality="0", format="bmp", max_width="-1")
    assert response.status_code == 422
    assert [p["field"] for p in response.json()["problems"]] == ["email", "max_width", "format", "quality"]


async def test_image_options_are_stored_with_the_request_and_shown_in_its_status(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    response = await post_csv(api, GOOD_CSV, max_width="800", format="WebP", quality="auto")
    assert response.status_code == 202, response.text
    body = response.json()
    expected = {"max_width": 800, "format": "webp", "quality": "auto", "target": DEFAULT_TARGET}
    assert body["options"] == expected  # auto's target is pinned when the request is accepted
    stored = await mongo.requests.find_one({"_id": body["request_id"]})
    assert stored is not None and stored["options"] == expected
    status = (await api.get(f"/status/{body['request_id']}")).json()
    assert status["options"] == {"max_height": None, **expected}
    assert status["product_details"][0]["output_details"] == [None, None]


async def test_image_options_may_come_as_query_parameters_like_email(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/upload?email=q@example.com&quality=70&max_height=300",
        files={"file": ("p.csv", GOOD_CSV.encode(), "text/csv")},
    )
    assert response.status_code == 202 and response.json()["options"] == {"max_height": 300, "quality": 70}


async def test_a_request_without_options_stores_none(api: httpx.AsyncClient, mongo: Mongo) -> None:
    body = (await post_csv(api, GOOD_CSV)).json()
    assert body["options"] == {}
    stored = await mongo.requests.find_one({"_id": body["request_id"]})
    assert stored is not None and "options" not in stored


async def test_missing_file_is_a_bad_request(api: httpx.AsyncClient) -> None:
    response = await api.post("/upload", data={"email": "a@example.com"})
    assert response.status_code == 400
    assert response.json()["problems"][0]["field"] == "file"


async def test_a_rejected_csv_names_row_column_and_reason_and_stores_nothing(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    bad = "S. No.,Product Name,Input Image Urls\n1,,https://a.example/x.jpg\n1,B,ftp://a.example/y.jpg\n"
    response = await post_csv(api, bad)
    assert response.status_code == 422
    body = response.json()
    assert "nothing was queued" in body["error"]
    located = {(p["row"], p["column"]) for p in body["problems"]}
    assert (2, "Product Name") in located
    assert (3, "S. No.") in located and (3, "Input Image Urls") in located
    assert await mongo.rows.count_documents({}) == 0
    assert await mongo.requests.count_documents({}) == 0


async def test_not_a_csv_is_unsupported(api: httpx.AsyncClient) -> None:
    response = await post_csv(api, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    assert response.status_code == 415
    assert "PNG" in response.json()["problems"][0]["reason"]


async def test_an_oversized_upload_is_refused_with_413(settings: Settings, mongo: Mongo) -> None:
    small = settings.model_copy(update={"max_csv_bytes": 1000})
    async for api in client_for(small):
        big = GOOD_CSV + "".join(f'{n},P{n},"https://img.example.com/{n}.jpg"\n' for n in range(2, 2000))
        response = await post_csv(api, big)
        assert response.status_code == 413
        assert response.json()["problems"][0]["reason"]


async def test_limits_on_rows_are_settings(settings: Settings, mongo: Mongo) -> None:
    limited = settings.model_copy(update={"max_rows": 2})
    async for api in client_for(limited):
        rows = GOOD_CSV + '2,B,"https://img.example.com/c.jpg"\n3,C,"https://img.example.com/d.jpg"\n'
        response = await post_csv(api, rows)
        assert response.status_code == 413
        assert "2" in response.json()["problems"][0]["reason"]


async def test_status_pages_products(api: httpx.AsyncClient) -> None:
    rows = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f'{n},P{n},"https://img.example.com/{n}.jpg"\n' for n in range(1, 1201)
    )
    request_id = (await post_csv(api, rows)).json()["request_id"]
    page = (await api.get(f"/status/{request_id}", params={"offset": 499, "limit": 3})).json()
    assert [p["product_name"] for p in page["product_details"]] == ["P500", "P501", "P502"]
    assert page["product_details"][1]["input_urls"] == ["https://img.example.com/501.jpg"]
    assert page["page"] == {"offset": 499, "limit": 3, "total_products": 1200}
    default = (await api.get(f"/status/{request_id}")).json()
    assert len(default["product_details"]) == 20
    summary = (await api.get(f"/status/{request_id}", params={"view": "summary"})).json()
    assert "product_details" not in summary and summary["total_products"] == 1200
    assert (await api.get(f"/status/{request_id}", params={"limit": 0})).status_code == 400


class TestApiKeys:
    KEY = "k-" + "s" * 30
    SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    @pytest.fixture
    async def secured(self, settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
        s = settings.model_copy(
            update={"api_keys": [SecretStr(self.KEY)], "webhook_secret": SecretStr(self.SECRET)}
        )
        async for client in client_for(s):
            yield client

    async def test_requests_without_a_valid_key_are_refused(self, secured: httpx.AsyncClient) -> None:
        assert (await post_csv(secured, GOOD_CSV)).status_code == 401
        wrong = await secured.post(
            "/upload",
            files={"file": ("p.csv", GOOD_CSV.encode(), "text/csv")},
            data={"email": "a@example.com"},
            headers={"X-API-Key": "nope"},
        )
        assert wrong.status_code == 401
        assert (await secured.get("/status/" + "x" * 22)).status_code == 401
        assert (await secured.get("/healthz")).status_code == 200

    async def test_a_valid_key_is_accepted(self, secured: httpx.AsyncClient) -> None:
        response = await secured.post(
            "/upload",
            files={"file": ("p.csv", GOOD_CSV.encode(), "text/csv")},
            data={"email": "a@example.com"},
            headers={"X-API-Key": self.KEY},
        )
        assert response.status_code == 202
        status = await secured.get(
            f"/status/{response.json()['request_id']}", headers={"Authorization": f"Bearer {self.KEY}"}
        )
        assert status.status_code == 200

    async def test_re_notify_needs_an_api_key_a_webhook_signature_is_no_credential(
        self, secured: httpx.AsyncClient
    ) -> None:
        body = b'{"request_id": "' + b"z" * 22 + b'"}'
        json_body = {"content-type": "application/json"}
        unsigned = await secured.post("/webhook-completed", content=body, headers=json_body)
        assert unsigned.status_code == 401
        # Signed with the secret the gateway once accepted here (every receiver held it): refused now.
        signed = signed_headers(self.SECRET, "msg_1", int(time.time()), body)
        forged = await secured.post("/webhook-completed", content=body, headers={**json_body, **signed})
        assert forged.status_code == 401
        keyed = await secured.post(
            "/webhook-completed", content=body, headers={**json_body, "X-API-Key": self.KEY}
        )
        assert keyed.status_code == 404  # authorised; the request id is simply unknown


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data", "http://[::ffff:169.254.169.254]/", "http://0.0.0.0:9/"],
)
async def test_a_webhook_url_at_a_refused_address_is_named(api: httpx.AsyncClient, url: str) -> None:
    response = await post_csv(api, GOOD_CSV, webhook_url=url)
    assert response.status_code == 422
    (found,) = response.json()["problems"]
    assert found["field"] == "webhook_url" and "refused" in found["reason"]


async def test_bad_parameters_get_the_same_error_shape(api: httpx.AsyncClient) -> None:
    response = await api.get("/status/" + "x" * 22, params={"offset": "abc"})
    assert response.status_code == 400
    assert response.json()["problems"][0]["field"] == "offset"
    missing = await api.get("/no-such-path")
    assert missing.status_code == 404 and "error" in missing.json()


async def test_an_empty_configured_key_never_authenticates(settings: Settings, mongo: Mongo) -> None:
    s = settings.model_copy(update={"api_keys": [SecretStr("")]})
    async for api in client_for(s):
        assert (await api.get("/status/" + "x" * 22)).status_code == 401


async def test_an_internationalised_domain_is_accepted_and_stored_as_it_is_sent(
    api: httpx.AsyncClient, mongo: Mongo
) -> None:
    response = await post_csv(api, GOOD_CSV, email="buyer@bücher.example")
    assert response.status_code == 202, response.text
    doc = await mongo.requests.find_one({"_id": response.json()["request_id"]})
    assert doc is not None and doc["email"] == "buyer@xn--bcher-kva.example"  # plain ASCII in the headers


async def api_with_faulty_accept(
    settings: Settings, lands: bool, settles: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, MongoRequestRepository]]:
    """The API, whose accept step fails: after its write landed (the reply was lost) or before."""
    app = create_app(settings)
    repo: MongoRequestRepository = app.state.gateway.runtime.repo
    accept, settle = repo.accept_request, repo.settle_upload

    async def faulty_accept(request_id: str) -> RequestDoc | None:
        if lands:
            await accept(request_id)
        raise StorageUnavailable("NetworkTimeout: no reply")

    async def silent_settle(request_id: str) -> bool:
        raise StorageUnavailable("ServerSelectionTimeoutError: no server")

    repo.accept_request = faulty_accept  # type: ignore[method-assign]
    repo.settle_upload = settle if settles else silent_settle  # type: ignore[method-assign]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client, repo


async def test_an_upload_whose_accept_landed_but_lost_its_reply_is_accepted(
    settings: Settings, mongo: Mongo
) -> None:
    async for api, _ in api_with_faulty_accept(settings, lands=True):
        response = await post_csv(api, GOOD_CSV)
        assert response.status_code == 202, response.text
        status = await api.get(f"/status/{response.json()['request_id']}")
        assert status.status_code == 200 and status.json()["status"] == "PENDING"


async def test_an_upload_whose_accept_failed_is_refused_for_certain(settings: Settings, mongo: Mongo) -> None:
    async for api, repo in api_with_faulty_accept(settings, lands=False):
        response = await post_csv(api, GOOD_CSV)
        assert response.status_code == 503 and "nothing was accepted" in response.text
        (request_id,) = [doc["_id"] async for doc in mongo.rows.find({}, projection={"request_id": 1})] or [
            None
        ]
        assert request_id is None, "its rows are removed"
        assert await mongo.requests.count_documents({}) == 0
        assert [r async for r in repo.outbox_pending()] == []


async def test_an_upload_the_database_will_not_settle_says_its_outcome_is_not_known(
    settings: Settings, mongo: Mongo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "SETTLE_WITHIN_S", 0.5)
    async for api, _ in api_with_faulty_accept(settings, lands=False, settles=False):
        response = await post_csv(api, GOOD_CSV)
        assert response.status_code == 503
        (doc,) = [d async for d in mongo.requests.find({})]
        assert doc["status"] == "RECEIVING", "invisible: never published, 404 on status"
        assert doc["_id"] in response.json()["error"] and "did not confirm" in response.json()["error"]
        assert (await api.get(f"/status/{doc['_id']}")).status_code == 404


async def test_a_re_send_no_queue_takes_answers_503_and_can_be_retried_at_once(
    api: httpx.AsyncClient, settings: Settings, mongo: Mongo
) -> None:
    repo = MongoRequestRepository(mongo)
    await repo.add_rows("r" * 22, 0, 0, [RowDoc(serial="1", name="A", urls=["http://o/a"], cells=[])])
    await repo.create_request("r" * 22, an_upload())
    await repo.accept_request("r" * 22)
    outcome = OutcomeDoc(
        request_id="r" * 22, index=0, url="http://o/a", status=OutcomeStatus.FAILED, at=datetime.now(UTC)
    )
    assert await repo.record_outcomes("r" * 22, [outcome])  # COMPLETED

    # No notifier has declared its queue under this prefix: the broker returns the NotificationRequested.
    for _ in range(2):  # not a 429: the re-send was never queued, so its claim was given back
        response = await api.post(f"/webhook-completed?request_id={'r' * 22}")
        assert response.status_code == 503, response.text

    exchange = f"{settings.bus_prefix}.events"
    async with await aio_pika.connect(settings.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{settings.bus_prefix}.spy.renotify", exclusive=True)
        await queue.bind(exchange, routing_key=NotificationRequested.routing_key)
        response = await api.post(f"/webhook-completed?request_id={'r' * 22}")
        assert response.status_code == 202, response.text
        message = await queue.get(timeout=5)
        assert NotificationRequested.model_validate_json(message.body).request_id == "r" * 22
