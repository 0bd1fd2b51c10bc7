"""Accepting an upload with a fake repository: rows stored as read, the request document last."""

from __future__ import annotations

import io

import pytest
from starlette.datastructures import UploadFile

from services.upload.csv_input import CsvLimits, CsvRejected
from services.upload.errors import ApiError
from services.upload.intake import UploadFields, form_problems, store_request, upload_fields
from shared import repository
from shared.image_options import ImageOptions, OutputFormat
from shared.repository import RequestStatus
from tests.fakes import FakeRequestRepository

LIMITS = CsvLimits(max_bytes=10**6, max_rows=2000, max_urls_per_row=5, max_images=5000, max_url_length=500)


def csv_file(text: str) -> UploadFile:
    return UploadFile(io.BytesIO(text.encode()), filename="p.csv")


def upload(text: str, options: ImageOptions | None = None) -> UploadFields:
    return UploadFields(csv_file(text), "a@b.c", None, options or ImageOptions())


async def test_a_valid_csv_is_stored_in_chunks_and_then_made_visible() -> None:
    repo = FakeRequestRepository()
    csv = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f'{n},P{n},"https://i.example/{n}a.jpg, https://i.example/{n}b.jpg"\n' for n in range(1, 702)
    )
    request = await store_request(repo, LIMITS, "r1", upload(csv))
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
        await store_request(repo, LIMITS, "r1", upload("S. No.,Product Name\n1,A\n"))
    assert rejected.value.status_code == 422
    assert repo.requests == {}


def test_form_problems_name_each_field() -> None:
    problems = form_problems(None, "nope", "ftp://x", allow_private=False)
    assert [p["field"] for p in problems] == ["file", "email", "webhook_url"]


async def test_the_options_are_stored_on_the_request_only_when_given() -> None:
    repo = FakeRequestRepository()
    csv = "S. No.,Product Name,Input Image Urls\n1,P,https://i.example/a.jpg\n"
    options = ImageOptions(max_width=800, format=OutputFormat.WEBP)
    await store_request(repo, LIMITS, "r1", upload(csv, options))
    await store_request(repo, LIMITS, "r2", upload(csv))
    assert repo.requests["r1"]["options"] == {"max_width": 800, "format": "webp"}
    assert "options" not in repo.requests["r2"]


def fields(form: dict[str, object], query: dict[str, str] | None = None) -> UploadFields:
    return upload_fields(form, query or {}, allow_private=False, max_csv_bytes=100)


def test_the_form_gives_its_fields_with_the_options_from_the_form_or_the_query() -> None:
    got = fields({"file": csv_file("x"), "email": "a@b.c", "quality": "AUTO"}, {"max_width": "640"})
    assert (got.email, got.webhook_url) == ("a@b.c", None)
    assert got.options == ImageOptions(max_width=640, quality="auto").resolved()  # auto's target pinned
    blank = fields({"file": csv_file("x"), "email": "a@b.c", "format": "", "target": " "})
    assert blank.options.is_default()  # what a web form sends for options left unset


def test_every_bad_field_is_named_at_once_options_included() -> None:
    with pytest.raises(ApiError) as rejected:
        fields({"file": csv_file("x"), "email": "nope", "quality": "0", "format": "bmp", "max_width": "-1"})
    assert rejected.value.status == 422
    assert [p["field"] for p in rejected.value.problems] == ["email", "max_width", "format", "quality"]
    with pytest.raises(ApiError) as no_file:
        fields({"email": "a@b.c", "target": "70"})
    assert no_file.value.status == 400
    assert [p["field"] for p in no_file.value.problems] == ["file", "target"]


def test_a_file_over_the_limit_is_a_413_naming_it() -> None:
    big = UploadFile(io.BytesIO(b"x" * 101), filename="p.csv", size=101)
    with pytest.raises(ApiError) as rejected:
        fields({"file": big, "email": "a@b.c"})
    assert (rejected.value.status, rejected.value.problems[0]["field"]) == (413, "file")


def test_a_request_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command line would read `imagepipe status -hGf8...` as an option: about 1 id in 64 would be."""
    drawn = iter(["-hGf8u9WRdyNzHB6NTBmIA", "hGf8u9WRdyNzHB6NTBmIA-"])
    monkeypatch.setattr(repository.secrets, "token_urlsafe", lambda _: next(drawn))
    assert repository.new_request_id() == "hGf8u9WRdyNzHB6NTBmIA-"
