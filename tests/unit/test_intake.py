"""Accepting an upload with a fake repository: rows stored as read, the request document last."""

from __future__ import annotations

import io

import pytest
from starlette.datastructures import UploadFile

from services.upload.csv_input import CsvLimits, CsvRejected
from services.upload.intake import form_problems, store_request
from shared.repository import RequestStatus
from tests.fakes import FakeRequestRepository

LIMITS = CsvLimits(max_bytes=10**6, max_rows=2000, max_urls_per_row=5, max_images=5000, max_url_length=500)


def upload(text: str) -> UploadFile:
    return UploadFile(io.BytesIO(text.encode()), filename="p.csv")


async def test_a_valid_csv_is_stored_in_chunks_and_then_made_visible() -> None:
    repo = FakeRequestRepository()
    csv = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f'{n},P{n},"https://i.example/{n}a.jpg, https://i.example/{n}b.jpg"\n' for n in range(1, 702)
    )
    request = await store_request(repo, LIMITS, "r1", upload(csv), "a@b.c", None)
    assert (request["status"], request["total_products"], request["total_images"]) == (
        RequestStatus.PENDING,
        701,
        1402,
    )
    assert request["row_chunks"] == 2 and request["outbox_pending"] is True
    assert [repo.chunks[("r1", n)]["first_image"] for n in (0, 1)] == [0, 1000]
    assert repo.requests["r1"]["email"] == "a@b.c"


async def test_an_invalid_csv_creates_no_request() -> None:
    repo = FakeRequestRepository()
    with pytest.raises(CsvRejected) as rejected:
        await store_request(repo, LIMITS, "r1", upload("S. No.,Product Name\n1,A\n"), "a@b.c", None)
    assert rejected.value.status_code == 422
    assert repo.requests == {}


def test_form_problems_name_each_field() -> None:
    problems = form_problems(None, "nope", "ftp://x", allow_private=False)
    assert [p["field"] for p in problems] == ["file", "email", "webhook_url"]
