"""The Idempotency-Key header's checks, and what the body's fingerprint covers."""

from __future__ import annotations

import io

import pytest
from starlette.datastructures import UploadFile

from services.upload.errors import ApiError
from services.upload.idempotency import fingerprint, idempotency_key
from services.upload.intake import UploadFields
from shared.image_options import ImageOptions


@pytest.mark.parametrize("key", ["a", "3f1c2a9e-8d4b-4c1e-9a57-0b6c7d8e9f10", "x" * 255, "b64+/=:~!"])
def test_a_well_formed_key_is_taken_as_it_is(key: str) -> None:
    assert idempotency_key(key) == key
    assert idempotency_key(None) is None


@pytest.mark.parametrize("key", ["", "x" * 256, "two words", "caf\u00e9", "new\nline"])
def test_a_malformed_key_is_a_400_naming_the_header(key: str) -> None:
    with pytest.raises(ApiError) as info:
        idempotency_key(key)
    assert info.value.status == 400 and info.value.problems[0]["field"] == "Idempotency-Key"


def fields(csv: bytes, email: str = "a@example.com", **options: object) -> UploadFields:
    return UploadFields(UploadFile(io.BytesIO(csv)), email, None, ImageOptions.model_validate(options))


async def test_the_fingerprint_covers_the_csv_and_every_field_and_leaves_the_file_readable() -> None:
    first = fields(b"S. No.,Product Name,Input Image Urls\n")
    same = await fingerprint(first)
    assert first.file.file.read() == b"S. No.,Product Name,Input Image Urls\n"  # rewound for the upload
    assert await fingerprint(fields(b"S. No.,Product Name,Input Image Urls\n")) == same
    assert await fingerprint(fields(b"S. No.,Product Name,Input Image Urls\r\n")) != same
    assert await fingerprint(fields(b"S. No.,Product Name,Input Image Urls\n", "b@example.com")) != same
    assert await fingerprint(fields(b"S. No.,Product Name,Input Image Urls\n", format="webp")) != same
