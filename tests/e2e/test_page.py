"""The web page, in headless Chromium against the whole system: upload through the form, watch the live
progress to COMPLETED with before/after thumbnails, failures and the output CSV; the request's own page
can be bookmarked. Set IMAGEPIPE_SCREENSHOT=path.png to keep a screenshot (docs/page.png comes from it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.async_api import Browser, expect

from localrun.samples import photo
from tests import images
from tests.e2e.conftest import API_KEY
from tests.e2e.test_pipeline import product_csv
from tests.stack import Stack


async def test_upload_through_the_page_and_watch_it_complete(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    origin = stack.origin
    names = [f"page-{n}.jpg" for n in range(5)]
    for seed, name in enumerate(names):
        origin.images[name] = photo(900, 700, seed=40 + seed)
        origin.delay[name] = 0.3 * seed  # so the page sees the request in progress first
    csv_path = tmp_path / "catalogue.csv"
    csv_path.write_text(
        product_csv(
            [
                ("1", "Linen shirt", [origin.url(names[0]), origin.url(names[1])]),
                ("2", "Canvas tote", [origin.url(names[2]), origin.url("gone.jpg")]),
                ("3", "Desk lamp", [origin.url(names[3]), origin.url(names[4])]),
            ]
        )
    )
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{stack.api}/")
    await page.locator("#file").set_input_files(csv_path)
    await page.locator("#email").fill("team@example.com")
    await page.locator("#webhook_url").fill(f"{origin.base_url}/hook")
    await page.get_by_role("button", name="Upload and compress").click()

    await expect(page).to_have_url(re.compile(r"/r/[A-Za-z0-9_-]{16,}$"))
    request_id = page.url.rsplit("/", 1)[1]
    # The webhook's own signing secret, shown once, right after the upload.
    await expect(page.locator("#webhook-secret-value")).to_have_text(
        re.compile(r"^whsec_[A-Za-z0-9+/=]{40,}$")
    )
    await expect(page.locator("#state")).to_have_text("COMPLETED", timeout=60_000)
    await expect(page.locator("#count-compressed")).to_have_text("5")
    await expect(page.locator("#count-failed")).to_have_text("1")
    await expect(page.locator("#progress-pct")).to_have_text("100%")
    # Before/after thumbnails, loaded, with their sizes and the saving.
    after = page.locator('.thumb[data-status="COMPRESSED"] figure:nth-child(2) img')
    await expect(after).to_have_count(5)
    for n in range(5):
        await expect(after.nth(n)).to_have_js_property("complete", True)
        assert await after.nth(n).evaluate("img => img.naturalWidth") > 0
    await expect(page.locator(".thumb .sizes").first).to_contain_text(re.compile(r"KB → .*KB \u2212\d+%"))
    # The failure and its reason; the output CSV.
    await expect(page.locator("#failures")).to_contain_text("gone.jpg")
    await expect(page.locator("#failures")).to_contain_text("404")
    await expect(page.locator("#output-link")).to_have_attribute("href", f"/output/{request_id}")
    if os.environ.get("IMAGEPIPE_SCREENSHOT"):
        await page.screenshot(path=os.environ["IMAGEPIPE_SCREENSHOT"], full_page=True)

    # The request's page is its own: opened afresh (a bookmark), it shows the final state at once.
    bookmark = await browser.new_page()
    await bookmark.goto(f"{stack.api}/r/{request_id}")
    await expect(bookmark.locator("#state")).to_have_text("COMPLETED", timeout=10_000)
    await expect(bookmark.locator("#count-total")).to_have_text("6")
    await expect(bookmark.locator("#webhook-secret")).to_be_hidden()  # never shown again
    # ...and the upload form lists it among this browser's recent requests.
    await bookmark.goto(f"{stack.api}/")
    await expect(bookmark.locator("#recent")).to_contain_text(request_id)
    await page.close()
    await bookmark.close()


async def test_a_rejected_csv_is_explained_on_the_page(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("S. No.,Product Name,Input Image Urls\n1,,https://img.example.com/a.jpg\n")
    page = await browser.new_page()
    await page.goto(f"{stack.api}/")
    await page.locator("#file").set_input_files(bad)
    await page.locator("#email").fill("team@example.com")
    await page.get_by_role("button", name="Upload and compress").click()
    error = page.locator("#upload-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("row 2, column Product Name: blank product name")
    assert page.url == f"{stack.api}/"
    await page.close()


async def test_with_api_keys_on_the_page_asks_for_one_and_follows_with_it(
    stack: Stack, secured_api: str, browser: Browser, tmp_path: Path
) -> None:
    stack.origin.images["key-0.jpg"] = photo(300, 200, seed=5)
    csv_path = tmp_path / "keyed.csv"
    csv_path.write_text(product_csv([("1", "Keyed", [stack.origin.url("key-0.jpg")])]))
    page = await browser.new_page()
    await page.goto(f"{secured_api}/")
    await page.locator("#file").set_input_files(csv_path)
    await page.locator("#email").fill("team@example.com")
    await page.get_by_role("button", name="Upload and compress").click()
    await expect(page.locator("#key-panel")).to_be_visible()  # refused: the page asks for a key
    await expect(page.locator("#upload-error")).to_contain_text("API key")
    await page.locator("#key-input").fill(API_KEY)
    await page.get_by_role("button", name="Save").click()
    await page.get_by_role("button", name="Upload and compress").click()
    # The live page follows with the key (EventSource: as ?api_key=) to the end.
    await expect(page.locator("#state")).to_have_text("COMPLETED", timeout=60_000)
    await expect(page.locator('.thumb[data-status="COMPRESSED"]')).to_have_count(1)
    await page.close()


async def test_image_options_from_the_page_and_what_each_image_became(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    origin = stack.origin
    origin.images["page-opt-0.jpg"] = images.varied_photo("detailed", 800, 600, seed=7)
    origin.images["page-opt-1.png"] = images.png_with_alpha(300, 200)
    csv_path = tmp_path / "options.csv"
    csv_path.write_text(
        product_csv(
            [("1", "Mug", [origin.url("page-opt-0.jpg")]), ("2", "Cutout", [origin.url("page-opt-1.png")])]
        )
    )
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    await page.goto(f"{stack.api}/")
    await page.locator("#file").set_input_files(csv_path)
    await page.locator("#email").fill("team@example.com")
    await expect(page.locator("#target")).to_be_disabled()  # target goes with quality=auto only
    await page.locator("#max_width").fill("320")
    await page.locator("#format").select_option("webp")
    await page.locator("#quality").fill("0")
    await page.get_by_role("button", name="Upload and compress").click()
    # A bad value is refused by the server, named, and nothing is uploaded.
    await expect(page.locator("#upload-error")).to_contain_text("quality: quality must be")
    assert page.url == f"{stack.api}/"

    await page.locator("#quality").fill("auto")
    await expect(page.locator("#target")).to_be_enabled()
    await page.locator("#target").fill("60")
    await page.get_by_role("button", name="Upload and compress").click()
    await expect(page).to_have_url(re.compile(r"/r/[A-Za-z0-9_-]{16,}$"))
    await expect(page.locator("#state")).to_have_text("COMPLETED", timeout=60_000)
    await expect(page.locator("#request-options")).to_have_text(
        "image options: max_width=320 · format=webp · quality=auto · target=60"
    )
    details = page.locator(".thumb .details")
    await expect(details).to_have_count(2)
    await expect(details.nth(0)).to_have_text(
        re.compile(r"^WEBP · 320\u00d7240 · q \d+ · score (6\d|[7-9]\d)(\.\d)?$")
    )
    await expect(details.nth(1)).to_have_text(re.compile(r"^WEBP · 300\u00d7200 · q \d+ · score \d+(\.\d)?$"))
    status = await stack.status(page.url.rsplit("/", 1)[1])
    assert status["options"] == {
        "max_width": 320, "max_height": None, "format": "webp", "quality": "auto", "target": 60.0,
    }  # fmt: skip
    if os.environ.get("IMAGEPIPE_SCREENSHOT"):
        await page.screenshot(
            path=os.environ["IMAGEPIPE_SCREENSHOT"].replace(".png", "-options.png"), full_page=True
        )
    await page.close()
