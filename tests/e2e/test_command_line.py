"""`imagepipe` as a user runs it, against the whole system: upload and wait, status, download, and the exit
code of each outcome (completed, some failed, refused, unreachable, not finished, API key)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path

from PIL import Image

from cli.exit_codes import Exit
from localrun.samples import photo
from localrun.supervisor import free_port
from tests.e2e.conftest import API_KEY
from tests.e2e.test_pipeline import product_csv
from tests.stack import Stack


async def imagepipe(api: str, *args: str, key: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPIPE_")}
    env.update({"IMAGEPIPE_URL": api, **({"IMAGEPIPE_API_KEY": key} if key else {})})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,  # as in a script: never a terminal to ask on
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def catalogue(stack: Stack, tmp_path: Path, prefix: str, images: int, *, missing: bool = False) -> Path:
    names = [f"{prefix}-{n}.jpg" for n in range(images)]
    for n, name in enumerate(names):
        stack.origin.images[name] = photo(500, 400, seed=90 + n)
    urls = [stack.origin.url(name) for name in names] + (
        [stack.origin.url(f"{prefix}-missing.jpg")] if missing else []
    )
    path = tmp_path / f"{prefix}.csv"
    rows = [("A-1", "Mug", urls[:2])] + ([("A/2", "Plate", urls[2:])] if urls[2:] else [])
    path.write_text(product_csv(rows))
    return path


async def test_upload_wait_status_and_download(stack: Stack, tmp_path: Path) -> None:
    code, out, err = await imagepipe(
        stack.api, "upload", str(catalogue(stack, tmp_path, "cli", 3)), "--email", "a@example.com", "--wait"
    )
    assert code == Exit.OK, err
    request_id = out.strip()  # the id alone on stdout, for scripts
    assert "COMPLETED" in err and "3 compressed" in err

    code, _, err = await imagepipe(stack.api, "status", request_id)
    assert code == Exit.OK and "COMPLETED" in err

    folder = tmp_path / "out"
    code, _, err = await imagepipe(stack.api, "download", request_id, "-o", str(folder))
    assert code == Exit.OK, err
    rows = list(csv.reader(io.StringIO((folder / f"imagepipe-{request_id}.csv").read_text("utf-8-sig"))))
    assert rows[0][-1] == "Output Image Urls" and len(rows) == 3
    images = sorted(p.name for p in (folder / "images").iterdir())
    assert images == ["A-1-1.jpg", "A-1-2.jpg", "A_2-1.jpg"]  # <S. No.>-<position>, made safe as a file name
    assert all((folder / "images" / name).read_bytes()[:2] == b"\xff\xd8" for name in images)


async def test_some_failed_images_have_their_own_exit_code_and_are_listed(
    stack: Stack, tmp_path: Path
) -> None:
    path = catalogue(stack, tmp_path, "clifail", 2, missing=True)
    code, _, err = await imagepipe(stack.api, "upload", str(path), "--email", "a@example.com", "--wait")
    assert code == Exit.SOME_FAILED, err
    assert "clifail-missing.jpg" in err and "404" in err


async def test_a_refused_upload_says_what_to_fix(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("S. No.,Product Name,Input Image Urls\n1,Mug,ftp://x.example/a.jpg\n")
    code, out, err = await imagepipe(stack.api, "upload", str(bad), "--email", "a@example.com")
    assert code == Exit.REFUSED and out == ""
    assert "HTTP 422" in err and "row 2, Input Image Urls" in err and "ftp" in err
    code, _, err = await imagepipe(stack.api, "status", "no-such-request-id-here")
    assert code == Exit.REFUSED and "404" in err


async def test_an_unreachable_api_has_its_own_exit_code() -> None:
    code, _, err = await imagepipe(f"http://127.0.0.1:{free_port()}", "status", "x" * 22)
    assert code == Exit.UNAVAILABLE and "cannot reach imagepipe" in err


async def test_a_request_still_running_is_pending(stack: Stack, tmp_path: Path) -> None:
    path = catalogue(stack, tmp_path, "clislow", 1)
    stack.origin.held["clislow-0.jpg"] = released = asyncio.Event()  # pending until released, however slow
    code, out, _ = await imagepipe(stack.api, "upload", str(path), "--email", "a@example.com")
    assert code == Exit.OK
    request_id = out.strip()
    code, _, err = await imagepipe(stack.api, "download", request_id, "-o", str(tmp_path / "early"))
    assert code == Exit.PENDING and "not finished" in err
    released.set()
    code, _, _ = await imagepipe(stack.api, "status", request_id, "--wait")
    assert code == Exit.OK


async def test_the_api_key_comes_from_the_environment(stack: Stack, secured_api: str, tmp_path: Path) -> None:
    path = catalogue(stack, tmp_path, "clikey", 1)
    code, _, err = await imagepipe(secured_api, "upload", str(path), "--email", "a@example.com")
    assert code == Exit.REFUSED and "401" in err and "IMAGEPIPE_API_KEY" in err
    code, _, err = await imagepipe(
        secured_api, "upload", str(path), "--email", "a@example.com", "--wait", key=API_KEY
    )
    assert code == Exit.OK, err


async def test_upload_with_image_options_and_download_what_they_made(stack: Stack, tmp_path: Path) -> None:
    path = catalogue(stack, tmp_path, "cliopt", 3)
    options = ("--max-width", "240", "--max-height", "180", "--format", "webp", "--quality", "auto")
    code, out, err = await imagepipe(
        stack.api, "upload", str(path), "--email", "a@example.com", *options, "--target", "60", "--wait"
    )
    assert code == Exit.OK, err
    assert "options  max_width=240 · max_height=180 · format=webp · quality=auto · target=60" in err
    request_id = out.strip()

    code, out, _ = await imagepipe(stack.api, "status", request_id, "--json")
    assert code == Exit.OK
    status = json.loads(out)
    assert status["options"] == {
        "max_width": 240, "max_height": 180, "format": "webp", "quality": "auto", "target": 60.0,
    }  # fmt: skip
    details = [d for product in status["product_details"] for d in product["output_details"]]
    assert [(d["format"], d["width"], d["height"]) for d in details] == [("webp", 225, 180)] * 3  # 500x400
    assert all(d["quality"] and d["score"] >= 60 for d in details)

    folder = tmp_path / "out"
    code, _, err = await imagepipe(stack.api, "download", request_id, "-o", str(folder))
    assert code == Exit.OK, err
    names = sorted(p.name for p in (folder / "images").iterdir())
    assert names == ["A-1-1.webp", "A-1-2.webp", "A_2-1.webp"]
    with Image.open(folder / "images" / names[0]) as im:
        assert (im.format, im.size) == ("WEBP", (225, 180))


async def test_a_bad_image_option_is_refused_naming_it(stack: Stack, tmp_path: Path) -> None:
    path = catalogue(stack, tmp_path, "clibadopt", 1)
    code, out, err = await imagepipe(
        stack.api, "upload", str(path), "--email", "a@example.com", "--quality", "0", "--format", "bmp"
    )
    assert code == Exit.REFUSED and out == ""
    assert "HTTP 422" in err and "- format: format must be one of jpeg, webp, avif" in err
    assert "- quality: quality must be 'auto' or a whole number from 1 to 95, not 0" in err


async def test_delete_needs_a_yes_without_a_terminal_then_deletes(stack: Stack, tmp_path: Path) -> None:
    code, out, err = await imagepipe(
        stack.api,
        "upload",
        str(catalogue(stack, tmp_path, "cli-del", 1)),
        "--email",
        "a@example.com",
        "--wait",
    )
    assert code == Exit.OK, err
    request_id = out.strip()

    code, _, err = await imagepipe(stack.api, "delete", request_id)  # stdin is no terminal: nothing asked
    assert code == Exit.DECLINED and "--yes" in err
    assert (await imagepipe(stack.api, "status", request_id))[0] == Exit.OK  # still there

    code, _, err = await imagepipe(stack.api, "delete", request_id, "--yes")
    assert code == Exit.OK and f"deleted {request_id}" in err
    code, _, err = await imagepipe(stack.api, "status", request_id)
    assert code == Exit.REFUSED and "404" in err
    code, _, err = await imagepipe(stack.api, "delete", "z" * 22, "--yes")
    assert code == Exit.REFUSED and "unknown request_id" in err
