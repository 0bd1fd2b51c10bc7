"""Listing and cancelling, against the whole system as processes: a cancel that lands mid-batch (the origin
answers slowly) ends CANCELLED with a partial output CSV, never fetches the images it skipped, and sends one
email and webhook saying so; the CLI lists and cancels; the page lists recent requests and cancels."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from playwright.async_api import Browser, expect

from cli.exit_codes import Exit
from localrun.samples import photo
from tests.conftest import eventually
from tests.e2e.test_command_line import imagepipe
from tests.e2e.test_pipeline import product_csv
from tests.stack import Stack, csv_attachment

SKIPPED = "SKIPPED: cancelled before it was started"


def slow_catalogue(stack: Stack, prefix: str, images: int, delay: float = 1.5) -> str:
    """One product per image, each image served after `delay` seconds; their names are `<prefix>-<n>.jpg`."""
    rows = []
    for n in range(images):
        name = f"{prefix}-{n}.jpg"
        stack.origin.images[name] = photo(200, 150, seed=n)
        stack.origin.delay[name] = delay
        rows.append((str(n), f"Item {n}", [stack.origin.url(name)]))
    return product_csv(rows)


async def cancelled(stack: Stack, request_id: str) -> dict[str, object]:
    async def final() -> dict[str, object] | None:
        body = await stack.status(request_id, view="summary")
        return body if body["status"] == "CANCELLED" else None

    return await eventually(final, timeout=90, interval=0.25)  # type: ignore[no-any-return]


async def test_a_cancel_mid_batch_skips_the_rest_unfetched_and_says_so_once(stack: Stack) -> None:
    images = 40
    hook = f"{stack.origin.base_url}/hook"
    accepted = await stack.upload(slow_catalogue(stack, "cancel", images), webhook_url=hook)
    request_id = accepted["request_id"]
    names = [f"cancel-{n}.jpg" for n in range(images)]
    await eventually(lambda: sum(stack.origin.hits[n] for n in names) >= 2, timeout=60)

    answer = await stack.http.post(f"{stack.api}/requests/{request_id}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] == "CANCELLING"
    again = await stack.http.post(f"{stack.api}/requests/{request_id}/cancel")
    assert again.status_code in (200, 202)
    final = await cancelled(stack, request_id)
    assert final["no_img_skipped"] and final["no_img_compressed"] + final["no_img_skipped"] == images  # type: ignore[operator]

    # The partial output CSV: each skipped image says so, and was never fetched.
    output = await stack.http.get(f"{stack.api}/output/{request_id}")
    rows = list(csv.reader(io.StringIO(output.content.decode("utf-8-sig"))))[1:]
    skipped = [row[2].rsplit("/", 1)[1] for row in rows if row[3] == SKIPPED]
    assert len(skipped) == final["no_img_skipped"] and len(rows) == images
    assert all(stack.origin.hits[name] == 0 for name in skipped), "a skipped image was fetched"
    compressed = [row[2].rsplit("/", 1)[1] for row in rows if row[3].startswith("http")]
    assert all(stack.origin.hits[name] >= 1 for name in compressed)

    # One email, saying cancelled, with the partial CSV; one webhook with status CANCELLED.
    mails = await eventually(lambda: stack.smtp.for_request(request_id))
    hooks = await eventually(
        lambda: [
            h for h in stack.origin.webhooks if json.loads(h["body"])["data"]["request_id"] == request_id
        ]
    )
    for hook in hooks:  # the origin is shared: other tests count the webhooks it receives
        stack.origin.webhooks.remove(hook)
    assert len(mails) == 1 and "cancelled" in mails[0]["Subject"]
    assert SKIPPED in csv_attachment(mails[0])
    assert len(hooks) == 1 and json.loads(hooks[0]["body"])["data"]["status"] == "CANCELLED"
    refused = await stack.http.post(f"{stack.api}/webhook-completed", json={"request_id": request_id})
    assert refused.status_code == 202  # a cancelled request is final: its email can be sent again


async def test_cancelling_a_completed_request_is_a_409(stack: Stack) -> None:
    accepted = await stack.upload(slow_catalogue(stack, "done", 1, delay=0))
    await stack.wait_completed(accepted["request_id"])
    answer = await stack.http.post(f"{stack.api}/requests/{accepted['request_id']}/cancel")
    assert answer.status_code == 409 and "already complete" in answer.json()["error"]


async def test_the_cli_lists_and_cancels(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "slow.csv"
    path.write_text(slow_catalogue(stack, "clicancel", 20))
    code, out, err = await imagepipe(stack.api, "upload", str(path), "--email", "a@example.com")
    assert code == Exit.OK, err
    request_id = out.strip()
    code, out, _ = await imagepipe(stack.api, "list", "--json", "--limit", "100")
    assert code == Exit.OK
    listed = {r["request_id"]: r for r in json.loads(out)["requests"]}
    assert listed[request_id]["status"] == "PENDING"

    code, _, err = await imagepipe(stack.api, "cancel", request_id)
    assert code == Exit.CANCELLED, err
    assert "CANCELLED" in err and "skipped" in err
    code, out, _ = await imagepipe(stack.api, "list")
    assert code == Exit.OK and request_id in out and "CANCELLED" in out
    code, _, err = await imagepipe(stack.api, "cancel", request_id)
    assert code == Exit.CANCELLED  # again: harmless, it says how it ended
    code, _, err = await imagepipe(stack.api, "cancel", "x" * 22)
    assert code == Exit.REFUSED and "unknown request_id" in err


async def test_the_page_lists_recent_requests_and_cancels_one(stack: Stack, browser: Browser) -> None:
    # 48 images, 8 fetched at a time (2 compressors, 4 per host), 2.5 s each: the cancel lands mid-batch.
    accepted = await stack.upload(slow_catalogue(stack, "pagecancel", 48, delay=2.5))
    request_id = accepted["request_id"]
    page = await browser.new_page()
    await page.goto(f"{stack.api}/")
    entry = page.locator("#recent li", has_text=request_id)
    await expect(entry).to_be_visible()
    await entry.get_by_role("link").click()
    await expect(page).to_have_url(f"{stack.api}/r/{request_id}")

    page.on("dialog", lambda dialog: dialog.accept())
    cancel = page.locator("#actions").get_by_role("button", name="Cancel request")
    await expect(cancel).to_be_visible(timeout=10_000)
    await cancel.click()
    await expect(page.locator("#state")).to_have_text("CANCELLED", timeout=60_000)
    await expect(cancel).to_be_hidden()
    await expect(page.locator("#skipped-stat")).to_be_visible()
    # The thumbnails (the first 24 images) show each skipped one as skipped.
    shown = (await stack.status(request_id, limit=24))["product_details"]
    skipped = sum(len(product["skipped"]) for product in shown)
    await expect(page.locator('.thumb[data-status="SKIPPED"]')).to_have_count(skipped)
    await expect(page.locator(".thumb").first).to_be_visible()
    await expect(page.locator("#output-link")).to_have_attribute("href", f"/output/{request_id}")
    await page.goto(f"{stack.api}/")
    await expect(page.locator("#recent li", has_text=request_id)).to_contain_text("CANCELLED")
    await page.close()
