"""Image options end to end, as a user drives them: upload with options, then status, images, CSV, email."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

from PIL import Image

from tests import images
from tests.conftest import eventually
from tests.e2e.test_pipeline import product_csv
from tests.stack import Stack, csv_attachment


def serve(stack: Stack, prefix: str) -> dict[str, str]:
    """Puts the test images on the origin under `prefix`; their URLs by name."""
    bodies = {
        "noisy.jpg": images.varied_photo("noisy", 900, 600, seed=1),
        "smooth.jpg": images.varied_photo("smooth", 900, 600, seed=1),
        "detailed.jpg": images.varied_photo("detailed", 600, 900, seed=1),
        "packshot.jpg": images.varied_photo("product", 800, 800, seed=1),
        "rotated.jpg": images.jpeg_rotated(6, 600, 400),  # shown 600x400, stored sideways, with GPS
        "cutout.png": images.png_with_alpha(300, 200),
        "spinner.gif": images.animated_gif(64, 48, frames=4, durations=[100, 200, 300, 400]),
    }
    for name, body in bodies.items():
        stack.origin.images[f"{prefix}-{name}"] = body
    return {name: stack.origin.url(f"{prefix}-{name}") for name in bodies}


async def upload(stack: Stack, urls: dict[str, str], **options: str) -> str:
    rows = [(str(n + 1), name, [url]) for n, (name, url) in enumerate(urls.items())]
    accepted = await stack.upload(product_csv(rows), **options)
    return str(accepted["request_id"])


async def outputs(stack: Stack, request_id: str) -> dict[str, tuple[dict[str, Any], Image.Image]]:
    """Each product's output details and its downloaded, decoded output, by product name."""
    done = await stack.wait_completed(request_id, timeout=120)
    assert done["no_img_failed"] == 0, done["failures"]
    found: dict[str, tuple[dict[str, Any], Image.Image]] = {}
    for product in done["product_details"]:
        (details,), (url,) = product["output_details"], product["output_urls"]
        response = await stack.http.get(url)
        assert response.headers["content-type"] == f"image/{details['format']}"
        assert len(response.content) == details["bytes"]
        found[product["product_name"]] = (details, Image.open(io.BytesIO(response.content)))
    return found


async def test_every_image_option_works_through_the_api(stack: Stack) -> None:
    urls = serve(stack, "opts")
    photos = {k: v for k, v in urls.items() if k.endswith(".jpg")}
    box, jpeg, avif, auto, default = await asyncio.gather(
        upload(stack, urls, max_width="400", max_height="400"),
        upload(stack, {"cutout.png": urls["cutout.png"]}, format="jpeg"),
        upload(stack, {**photos, "cutout.png": urls["cutout.png"]}, format="avif", quality="80"),
        upload(stack, photos, format="webp", quality="auto", target="65"),
        upload(stack, {"smooth.jpg": urls["smooth.jpg"]}),
    )

    # The box: aspect kept, EXIF orientation applied first, every frame of the animation resized.
    resized = await outputs(stack, box)
    sizes = {name: (d["width"], d["height"]) for name, (d, _) in resized.items()}
    assert sizes == {
        "noisy.jpg": (400, 267),
        "smooth.jpg": (400, 267),
        "detailed.jpg": (267, 400),
        "packshot.jpg": (400, 400),
        "rotated.jpg": (400, 267),
        "cutout.png": (300, 200),  # already inside the box: never upscaled
        "spinner.gif": (64, 48),
    }
    assert all(im.size == sizes[name] for name, (_, im) in resized.items())
    rotated = resized["rotated.jpg"][1].convert("RGB")
    red, _, blue = rotated.getpixel((20, 20))  # type: ignore[misc]
    assert red > 200 and blue < 60  # red top-left, as the original is shown
    assert not resized["rotated.jpg"][1].getexif()  # GPS and camera gone

    # jpeg on a transparent image: flattened onto white.
    ((details, cutout),) = (await outputs(stack, jpeg)).values()
    assert (details["format"], cutout.mode) == ("jpeg", "RGB")
    assert min(cutout.getpixel((4, 100))) > 245  # type: ignore[arg-type]

    # avif at a fixed quality: every output AVIF, the quality recorded, transparency kept.
    as_avif = await outputs(stack, avif)
    assert {(d["format"], d["quality"]) for d, _ in as_avif.values()} == {("avif", 80)}
    assert as_avif["cutout.png"][1].mode == "RGBA"

    # auto: per image, a quality whose score meets the target; noisy photos need more than smooth ones.
    chosen = await outputs(stack, auto)
    assert all(d["format"] == "webp" and d["score"] >= 65 for d, _ in chosen.values())
    assert chosen["noisy.jpg"][0]["quality"] > chosen["smooth.jpg"][0]["quality"]

    # no options: exactly today's output (JPEG at the configured quality 50)
    ((plain, _),) = (await outputs(stack, default)).values()
    assert (plain["format"], plain["quality"], plain["score"]) == ("jpeg", 50, None)


async def test_options_are_listed_in_the_status_output_csv_and_email(stack: Stack) -> None:
    urls = serve(stack, "listed")
    request_id = await upload(stack, {"smooth.jpg": urls["smooth.jpg"]}, max_width="300", quality="auto")
    status = await stack.wait_completed(request_id, timeout=120)
    assert status["options"]["max_width"] == 300 and status["options"]["quality"] == "auto"
    described = f"max_width=300; quality=auto; target={status['options']['target']:g}"

    output = await stack.http.get(f"{stack.api}/output/{request_id}")
    rows = list(csv.reader(io.StringIO(output.content.decode("utf-8-sig"))))
    assert rows[0][-2:] == ["Output Image Urls", "Image Options"]
    assert rows[1][-1] == described and rows[1][-2] == status["product_details"][0]["output_urls"][0]

    (mail,) = await eventually(lambda: stack.smtp.for_request(request_id))
    assert f"Options:     {described}" in mail.get_body(("plain",)).get_content()
    assert list(csv.reader(io.StringIO(csv_attachment(mail)))) == rows
