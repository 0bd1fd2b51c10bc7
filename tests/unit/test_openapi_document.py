"""What /docs is built from: the upload form, the answers, the error answers, the API key schemes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.upload.app import create_app
from services.upload.openapi import ProgressSnapshot
from shared.image_options import FIELDS, ImageOptions
from shared.settings import Settings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = Settings(mongo_url="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1", data_dir=Path("/tmp"))
    return create_app(settings).openapi()


def test_the_upload_is_a_multipart_form_with_a_file(document: dict[str, Any]) -> None:
    body = document["paths"]["/upload"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["file"] == {
        **schema["properties"]["file"],
        "type": "string",
        "format": "binary",
    }
    assert set(schema["properties"]) >= {"file", "email", "webhook_url"}
    assert schema["required"] == ["file", "email"]
    assert schema["properties"]["webhook_url"]["type"] == "string"  # a form field is never null


def test_every_answer_has_a_schema_and_errors_have_the_one_shape(document: dict[str, Any]) -> None:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation.get("tags"), (method, path)
            for status, answer in operation["responses"].items():
                content = answer.get("content")
                assert content, (method, path, status)
                if status.startswith(("4", "5")) and path != "/readyz":
                    schema = content["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            assert "422" not in operation["responses"] or path == "/upload", (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/upload", "post", {"202", "400", "401", "409", "413", "415", "422", "503"}),
        ("/status/{request_id}", "get", {"200", "400", "401", "404", "503"}),
        ("/status/{request_id}/events", "get", {"200", "401", "404", "503"}),
        ("/output/{request_id}", "get", {"200", "401", "404", "409", "503"}),
        ("/webhook-completed", "post", {"202", "400", "401", "404", "409", "429", "503"}),
        ("/image/{file_id}", "get", {"200", "404", "503"}),
        ("/requests/{request_id}", "delete", {"202", "401", "404", "503"}),
    ],
)
def test_each_route_documents_the_answers_it_gives(
    document: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    assert set(document["paths"][path][method]["responses"]) == statuses


def test_the_api_key_is_a_security_scheme(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["ApiKeyQuery"]["in"] == "query"
    paths = document["paths"]
    assert {"ApiKey": []} in paths["/upload"]["post"]["security"]
    assert {"ApiKey": []} in paths["/webhook-completed"]["post"]["security"]
    assert {"ApiKeyQuery": []} in paths["/status/{request_id}/events"]["get"]["security"]
    assert {"ApiKeyQuery": []} not in paths["/status/{request_id}"]["get"]["security"]
    assert "security" not in paths["/image/{file_id}"]["get"]  # public by design


def test_the_image_options_are_fields_of_the_upload_form_as_image_options_describes_them(
    document: dict[str, Any],
) -> None:
    body = document["paths"]["/upload"]["post"]["requestBody"]
    fields = body["content"]["multipart/form-data"]["schema"]["properties"]
    assert list(fields) == ["file", "email", "webhook_url", *FIELDS]  # in the order a person fills them
    for name in FIELDS:
        described = ImageOptions.model_fields[name].description
        assert described and fields[name]["description"].startswith(described), name
        assert fields[name]["examples"] == [""], name  # Try it out pre-fills nothing: nothing sent
    assert fields["format"]["enum"] == ["jpeg", "webp", "avif"]  # inlined: no reference left dangling
    assert "Example: `800`." in fields["max_width"]["description"]
    assert {o.get("type") for o in fields["quality"]["anyOf"]} == {"integer", "string"}
    assert (fields["max_width"]["minimum"], fields["max_width"]["maximum"]) == (1, 16383)


def test_the_answers_document_the_options_and_what_each_image_became(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["UploadAccepted"]["properties"]["options"]["$ref"].endswith("/ImageOptions")
    assert schemas["StatusBody"]["properties"]["options"]["$ref"].endswith("/ImageOptions")
    details = schemas["ProductDetail"]["properties"]["output_details"]["items"]["anyOf"]
    assert {"$ref": "#/components/schemas/OutputDetails"} in details
    assert set(schemas["OutputDetails"]["properties"]) == {
        "format", "width", "height", "bytes", "quality", "score", "kept_original",
    }  # fmt: skip
    snapshot = ProgressSnapshot.model_json_schema()  # described in words by the events route
    assert "output_details" in snapshot["$defs"]["ImageSnapshot"]["properties"]


def test_the_upload_documents_its_idempotency_key_header_and_webhook_secret(
    document: dict[str, Any],
) -> None:
    upload = document["paths"]["/upload"]["post"]
    (header,) = [p for p in upload["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key" and header["required"] is False
    assert header["schema"]["maxLength"] == 255
    assert "example" not in header and "examples" not in header  # "Try it out" must not send one
    assert "409" in upload["responses"] and "Idempotency-Key" in upload["responses"]["409"]["description"]
    secret = document["components"]["schemas"]["UploadAccepted"]["properties"]["webhook_secret"]
    assert "this answer alone" in secret["description"]
    assert "webhook_secret" not in document["components"]["schemas"]["StatusBody"]["properties"]
