"""Deleting requests with the whole system running: a completed one, and a running one that must stop."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

from playwright.async_api import Browser, Dialog, expect

from localrun.samples import photo
from services.upload import lifecycle
from shared.files import GridFsImageStore
from shared.mongo import connect_mongo
from shared.repository import MongoRequestRepository
from tests.conftest import eventually
from tests.e2e.test_pipeline import product_csv
from tests.stack import Stack


async def gone(stack: Stack, request_id: str) -> None:
    for path in (f"/status/{request_id}", f"/output/{request_id}", f"/status/{request_id}/events"):
        response = await stack.http.get(f"{stack.api}{path}")
        assert response.status_code == 404, (path, response.text)


def compressor_events(stack: Stack, request_id: str) -> Counter[str]:
    """How many times each compressor log event was written for the request."""
    assert stack.supervisor.log_dir is not None
    found: Counter[str] = Counter()
    for log_file in stack.supervisor.log_dir.glob("compressor*.log"):
        for line in log_file.read_text().splitlines():
            if request_id in line and line.startswith("{"):
                found[json.loads(line)["event"]] += 1
    return found


async def test_a_deleted_request_answers_404_for_its_status_output_and_images(stack: Stack) -> None:
    for n in range(3):
        stack.origin.images[f"del-{n}.jpg"] = photo(320, 240, seed=70 + n)
    urls = [stack.origin.url(f"del-{n}.jpg") for n in range(3)]
    request_id = (await stack.upload(product_csv([("1", "Gone", urls)])))["request_id"]
    done = await stack.wait_completed(request_id)
    image_urls = done["product_details"][0]["output_urls"]
    assert all([(await stack.http.get(url)).status_code == 200 for url in image_urls])

    deleted = await stack.http.delete(f"{stack.api}/requests/{request_id}")
    assert deleted.status_code == 202, deleted.text

    await gone(stack, request_id)

    async def images_gone() -> bool:
        return all([(await stack.http.get(url)).status_code == 404 for url in image_urls])

    await eventually(images_gone)
    unknown = await stack.http.delete(f"{stack.api}/requests/{'z' * 22}")
    assert unknown.status_code == 404


async def test_deleting_a_running_request_stops_its_work_and_nothing_of_it_comes_back(stack: Stack) -> None:
    names = [f"run-{n}.jpg" for n in range(80)]
    for seed, name in enumerate(names):
        stack.origin.images[name] = photo(320, 240, seed=seed)
        stack.origin.delay[name] = 1.0  # 8 fetched at a time: most are still queued at the delete
    rows = [(str(n), f"P{n}", [stack.origin.url(name)]) for n, name in enumerate(names)]
    request_id = (await stack.upload(product_csv(rows)))["request_id"]

    async def started() -> bool:
        return (await stack.status(request_id, view="summary"))["no_img_compressed"] > 0

    await eventually(started)
    deleted = await stack.http.delete(f"{stack.api}/requests/{request_id}")
    assert deleted.status_code == 202, deleted.text
    await gone(stack, request_id)

    # Every image ends either compressed (it was under way) or dropped unfetched (the request is gone).
    def settled() -> Counter[str] | None:
        events = compressor_events(stack, request_id)
        return events if events["image_compressed"] + events["image_dropped"] >= len(names) else None

    events = await eventually(settled, timeout=60)
    assert events["image_dropped"] > 0
    assert sum(stack.origin.hits[name] for name in names) < len(names)  # the dropped were never fetched

    # Nothing was recreated or sent; the sweep removes images stored after the delete.
    await gone(stack, request_id)
    assert stack.smtp.for_request(request_id) == []
    mongo = connect_mongo(stack.settings)
    try:
        repo, images = MongoRequestRepository(mongo), GridFsImageStore(mongo)
        assert await mongo.requests.count_documents({"_id": request_id}) == 0
        assert await mongo.rows.count_documents({"request_id": request_id}) == 0
        assert await mongo.images.count_documents({"request_id": request_id}) == 0  # late outcomes dropped
        await lifecycle.finish_purges(repo, images, settle=timedelta(0))
        assert await mongo.files.count_documents({"metadata.request_id": request_id}) == 0
    finally:
        await mongo.close()


async def test_the_request_page_deletes_the_request_after_asking(stack: Stack, browser: Browser) -> None:
    stack.origin.images["page-del.jpg"] = photo(320, 240, seed=90)
    request_id = (await stack.upload(product_csv([("1", "Shown", [stack.origin.url("page-del.jpg")])])))[
        "request_id"
    ]
    await stack.wait_completed(request_id)
    page = await browser.new_page()
    await page.goto(f"{stack.api}/r/{request_id}")
    await expect(page.locator("#state")).to_have_text("COMPLETED", timeout=10_000)
    delete = page.locator("#actions").get_by_role("button", name="Delete")

    questions: list[str] = []

    async def answer(dialog: Dialog, accept: bool) -> None:
        questions.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    await delete.click()
    await eventually(lambda: questions)
    assert request_id in questions[0] and "cannot be undone" in questions[0]
    assert (await stack.http.get(f"{stack.api}/status/{request_id}")).status_code == 200  # declined: kept

    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    await delete.click()
    await expect(page.locator("#request-deleted")).to_be_visible()
    await expect(page.locator("#state")).to_have_text("DELETED")
    await expect(delete).to_be_disabled()
    await gone(stack, request_id)
    await page.close()
