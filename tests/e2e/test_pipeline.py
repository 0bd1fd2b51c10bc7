"""The whole pipeline, as a user drives it: upload, progress, images, output CSV, email, webhook, re-notify."""

from __future__ import annotations

import csv
import io
import json

from gridfs import AsyncGridFSBucket
from pymongo import AsyncMongoClient
from standardwebhooks import Webhook

from localrun.samples import photo
from shared.webhooks import verify
from tests.conftest import eventually
from tests.e2e.conftest import WEBHOOK_SECRET
from tests.stack import Stack, csv_attachment


def product_csv(rows: list[tuple[str, str, list[str]]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for serial, name, urls in rows:
        writer.writerow([serial, name, ", ".join(urls)])
    return out.getvalue()


async def test_a_batch_goes_from_upload_to_email_and_webhook(stack: Stack) -> None:
    origin = stack.origin
    for n in range(4):
        origin.images[f"p{n}.jpg"] = photo(640, 480, seed=n)
    csv_text = product_csv(
        [
            ("1", "SKU1", [origin.url("p0.jpg"), origin.url("p1.jpg")]),
            ("2", "SKU2", [origin.url("p2.jpg"), origin.url("missing.jpg"), origin.url("p3.jpg")]),
        ]
    )

    accepted = await stack.upload(csv_text, webhook_url=f"{origin.base_url}/hook")
    request_id = accepted["request_id"]
    assert (accepted["products"], accepted["images"]) == (2, 5)
    assert accepted["status_url"].endswith(f"/status/{request_id}")

    # Durable and visible at once: never a 404 right after the upload.
    first = await stack.status(request_id)
    assert first["request_id"] == request_id and first["total_images"] == 5

    done = await stack.wait_completed(request_id)
    assert (done["no_img_compressed"], done["no_img_failed"], done["progress"]) == (4, 1, 100.0)
    assert [f["url"] for f in done["failures"]] == [origin.url("missing.jpg")]
    assert "404" in done["failures"][0]["reason"]
    details = done["product_details"]
    assert [d["product_name"] for d in details] == ["SKU1", "SKU2"]
    assert details[1]["input_urls"] == [origin.url(n) for n in ("p2.jpg", "missing.jpg", "p3.jpg")]
    assert [u is not None for u in details[1]["output_urls"]] == [True, False, True]

    # Each output is a real, smaller image, served with its content type.
    out_url = details[0]["output_urls"][1]
    image = await stack.http.get(out_url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content[:2] == b"\xff\xd8" and len(image.content) < len(origin.images["p1.jpg"])
    # ...and stored GridFS-compatibly: a stock GridFS client reads it back.
    client: AsyncMongoClient = AsyncMongoClient(stack.settings.mongo_url)
    grid = await AsyncGridFSBucket(client[stack.settings.mongo_db]).open_download_stream(
        out_url.rsplit("/", 1)[1]
    )
    assert await grid.read() == image.content
    await client.close()

    # The output CSV: the input rows plus outputs aligned one-to-one.
    output = await stack.http.get(f"{stack.api}/output/{request_id}")
    assert output.status_code == 200 and output.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(output.content.decode("utf-8-sig"))))
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    outputs = [cell.strip() for cell in rows[2][3].split(",")]
    assert outputs[0] == details[1]["output_urls"][0] and outputs[1].startswith("FAILED: ")

    # The uploader is told: one email with the CSV, one signed webhook.
    mails = await eventually(lambda: stack.smtp.for_request(request_id))
    assert len(mails) == 1 and mails[0]["To"] == "buyer@example.com"
    assert list(csv.reader(io.StringIO(csv_attachment(mails[0])))) == rows
    # The origin is shared with other tests (the page's upload sends a webhook too): count this request's.
    hooks = await eventually(lambda: [h for h in origin.webhooks if request_id.encode() in h["body"]])
    assert len(hooks) == 1
    # Signed with the request's own secret (from the 202), not the legacy one the stack is also given.
    secret = accepted["webhook_secret"]
    assert Webhook(secret).verify(hooks[0]["body"], hooks[0]["headers"])["type"] == "request.completed"
    assert verify(secret, hooks[0]["headers"], hooks[0]["body"])
    assert not verify(WEBHOOK_SECRET, hooks[0]["headers"], hooks[0]["body"])
    payload = json.loads(hooks[0]["body"])
    assert payload["type"] == "request.completed" and payload["data"]["failed"] == 1


async def test_re_notify_sends_the_email_again_only_for_completed_requests(stack: Stack) -> None:
    stack.origin.images["solo.jpg"] = photo(320, 240, seed=9)
    request_id = (await stack.upload(product_csv([("1", "Solo", [stack.origin.url("solo.jpg")])])))[
        "request_id"
    ]

    unknown = await stack.http.post(f"{stack.api}/webhook-completed", json={"request_id": "x" * 22})
    assert unknown.status_code == 404

    await stack.wait_completed(request_id)
    await eventually(lambda: len(stack.smtp.for_request(request_id)) == 1)
    again = await stack.http.post(f"{stack.api}/webhook-completed", json={"request_id": request_id})
    assert again.status_code == 202
    mails = await eventually(
        lambda: len(stack.smtp.for_request(request_id)) == 2 and stack.smtp.for_request(request_id)
    )
    too_soon = await stack.http.post(f"{stack.api}/webhook-completed", json={"request_id": request_id})
    assert too_soon.status_code == 429 and int(too_soon.headers["retry-after"]) > 0
    assert mails[0]["Message-ID"] != mails[1]["Message-ID"]


async def test_an_unfinished_request_cannot_be_re_notified(stack: Stack) -> None:
    stack.origin.images["slow.jpg"] = photo(320, 240, seed=3)
    stack.origin.delay["slow.jpg"] = 2.0
    request_id = (await stack.upload(product_csv([("1", "Slow", [stack.origin.url("slow.jpg")])])))[
        "request_id"
    ]

    early = await stack.http.post(f"{stack.api}/webhook-completed", json={"request_id": request_id})
    assert early.status_code == 409
    not_yet = await stack.http.get(f"{stack.api}/output/{request_id}")
    assert not_yet.status_code == 409
    await stack.wait_completed(request_id)


async def test_product_names_are_data_not_field_paths(stack: Stack) -> None:
    stack.origin.images["n.jpg"] = photo(200, 200, seed=5)
    url = stack.origin.url("n.jpg")
    names = ["a.b.c", "$set", "$set", 'naïve 日本語 "quoted"']
    rows = [(str(i + 1), name, [url]) for i, name in enumerate(names)]
    request_id = (await stack.upload(product_csv(rows)))["request_id"]

    done = await stack.wait_completed(request_id)
    assert [d["product_name"] for d in done["product_details"]] == names
    output = await stack.http.get(f"{stack.api}/output/{request_id}")
    parsed = list(csv.reader(io.StringIO(output.content.decode("utf-8-sig"))))
    assert [r[1] for r in parsed[1:]] == names


async def test_unknown_ids_get_404(stack: Stack) -> None:
    assert (await stack.http.get(f"{stack.api}/image/{'0' * 32}")).status_code == 404
    assert (await stack.http.get(f"{stack.api}/image/not-an-id")).status_code == 404
    assert (await stack.http.get(f"{stack.api}/status/{'y' * 22}")).status_code == 404
    assert (await stack.http.get(f"{stack.api}/output/{'y' * 22}")).status_code == 404


async def test_every_service_logs_the_request_id(stack: Stack) -> None:
    stack.origin.images["log.jpg"] = photo(200, 200, seed=11)
    request_id = (await stack.upload(product_csv([("1", "Logged", [stack.origin.url("log.jpg")])])))[
        "request_id"
    ]
    await stack.wait_completed(request_id)
    await eventually(lambda: stack.smtp.for_request(request_id))
    log_dir = stack.supervisor.log_dir
    assert log_dir is not None

    def events_by_service() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for log_file in log_dir.glob("*.log"):
            for line in log_file.read_text().splitlines():
                if request_id not in line or not line.startswith("{"):
                    continue
                record = json.loads(line)
                assert record.get("request_id") == request_id, f"{log_file.name}: {line}"
                found.setdefault(record["service"], set()).add(record["event"])
        return found

    # The notifier logs once it has recorded what it sent, a moment after the email arrives.
    await eventually(lambda: "notification_finished" in events_by_service().get("notifier", set()))
    events = events_by_service()
    assert "upload_accepted" in events["upload"]
    assert "image_compressed" in events["compressor"]
    assert "request_completed" in events["status"]


async def test_the_api_writes_one_access_line_per_request(stack: Stack) -> None:
    request_id = "a" * 22
    await stack.http.get(f"{stack.api}/status/{request_id}")  # an unknown id: 404, logged all the same
    assert stack.supervisor.log_dir is not None

    def access_lines() -> list[dict[str, object]]:
        lines = (stack.supervisor.log_dir / "upload.log").read_text().splitlines()  # type: ignore[operator]
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r["event"] == "http_request" and r.get("request_id") == request_id]

    (line,) = await eventually(access_lines)
    assert (line["method"], line["path"], line["status"]) == ("GET", f"/status/{request_id}", 404)
    assert isinstance(line["duration_ms"], float)


async def test_a_url_repeated_in_a_request_is_fetched_once_and_every_occurrence_gets_its_output(
    stack: Stack,
) -> None:
    origin = stack.origin  # shared by the session's tests: names of this test's own
    origin.images["repeated-same.jpg"] = photo(320, 240, seed=7)
    origin.images["repeated-other.jpg"] = photo(320, 240, seed=8)
    same, gone, other = (origin.url(f"repeated-{name}.jpg") for name in ("same", "gone", "other"))
    csv_text = product_csv(
        [
            ("1", "A", [same, gone, same]),
            ("2", "B", [other, same]),
            ("3", "C", [gone]),
        ]
    )
    request_id = (await stack.upload(csv_text))["request_id"]
    done = await stack.wait_completed(request_id)

    assert (origin.hits["repeated-same.jpg"], origin.hits["repeated-other.jpg"]) == (1, 1)
    assert origin.hits["repeated-gone.jpg"] == 1, "a failing URL is fetched once too"
    assert (done["no_img_compressed"], done["no_img_failed"]) == (4, 2)
    rows = [d["output_urls"] for d in done["product_details"]]
    assert rows[0][0] == rows[0][2] == rows[1][1] is not None  # every occurrence: the one output
    assert rows[0][1] is None and rows[2] == [None]
    output = await stack.http.get(f"{stack.api}/output/{request_id}")
    lines = list(csv.reader(io.StringIO(output.content.decode("utf-8-sig"))))
    assert lines[1][3].split(", ") == [rows[0][0], lines[1][3].split(", ")[1], rows[0][0]]
    assert lines[1][3].split(", ")[1].startswith("FAILED: HTTP 404") and lines[3][3].startswith(
        "FAILED: HTTP 404"
    )
