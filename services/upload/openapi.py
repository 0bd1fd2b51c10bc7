"""What /docs shows: the answers' models, the upload form, the error answers of each route, the tags.

The routes stay fast and hand-parsed (the upload form, the status rendering); these models describe what
they send and accept, and tests/integration/test_openapi.py holds the two together (schemathesis checks every
answer against them). A new form field of `POST /upload` (issue 12's image options) goes into `UploadForm`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, create_model

from shared.image_options import ImageOptions
from shared.repository import OutcomeStatus, RequestStatus

EXAMPLE_ID = "Xq3rT0a9VbKp2LmN4cD8eQ"

DESCRIPTION = """Upload a CSV of product image URLs; imagepipe compresses every image, tracks progress and tells you
when the batch is done (an email with the output CSV, and a signed webhook if you gave one).

**Try it:** `POST /upload` → *Try it out* → choose `samples/products.csv`, give an email, *Execute*; then
follow the `request_id` with `GET /status/{request_id}`, or open the web page at `/r/{request_id}`.

**Image options** (optional fields of the same form): `max_width`/`max_height` (a box, aspect kept),
`format` (`jpeg`, `webp`, `avif`), `quality` (1-95, or `auto`: per image, the lowest quality that meets an
SSIMULACRA2 `target`). The status shows what each image became (`output_details`).

**Errors** all have one shape, `{"error": ..., "problems": [{"row", "column", "field", "reason"}]}`.

**API keys** are needed only when the server sets `IMAGEPIPE_API_KEYS`: use *Authorize* (X-API-Key)."""

TAGS = [
    {"name": "uploads", "description": "Send a CSV of products and their image URLs."},
    {
        "name": "requests",
        "description": "Your requests: list them, follow one (progress, live events), get its output CSV, "
        "cancel or delete it.",
    },
    {"name": "images", "description": "The compressed images (public, unguessable links)."},
    {"name": "notifications", "description": "Send a finished request's email again."},
    {"name": "operations", "description": "Liveness, readiness and metrics."},
]


# --- the upload form ------------------------------------------------------------------------------------
class _UploadFields(BaseModel):
    file: bytes = Field(
        description="The CSV: columns `S. No.`, `Product Name`, `Input Image Urls` (comma-separated URLs).",
        examples=[
            'S. No.,Product Name,Input Image Urls\n1,SKU1,"https://img.example.com/a.jpg, https://img.example.com/b.jpg"\n'
        ],
    )
    email: str = Field(
        description="Who gets the completion email with the output CSV (also accepted as a query parameter).",
        examples=["you@example.com"],
    )
    webhook_url: str | None = Field(
        None,
        description="Optional: called (signed, Standard Webhooks) when the request completes, e.g. "
        "`https://hooks.example.com/imagepipe`.",
    )


# The multipart form of `POST /upload`, parsed and checked in intake.py (`upload_fields`): the fields above,
# then every image option, as `ImageOptions` defines, describes and validates them (one definition for the
# check, /docs, the page and the CLI, which send them under the same names).
_OPTION_FIELDS: dict[str, Any] = {name: (f.annotation, f) for name, f in ImageOptions.model_fields.items()}
UploadForm = create_model("UploadForm", __base__=_UploadFields, **_OPTION_FIELDS)


def multipart_body(form: type[BaseModel]) -> dict[str, Any]:
    """An `openapi_extra` documenting a hand-parsed multipart form (bytes fields are file uploads)."""
    schema = form.model_json_schema()
    schema.pop("title", None)
    defs = schema.pop("$defs", {})
    for name, prop in schema["properties"].items():
        # A form field is absent or text: an optional one is documented as what it holds, not as or-null.
        options = [_inlined(o, defs) for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        prop.update(options[0] if len(options) == 1 else {"anyOf": options} if options else {})
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        if name not in schema.get("required", ()):
            _examples_in_words(prop)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": schema, "encoding": {"file": {"contentType": "text/csv"}}}
            },
        }
    }


def _examples_in_words(prop: dict[str, Any]) -> None:
    """An optional field's examples go into its description, and its example becomes empty: Swagger UI's
    "Try it out" pre-fills every field with its first example (or "string", 0, the first of an enum), and an
    empty field means "not given", so a first try sends only what was typed in."""
    examples = [e for e in prop.get("examples", []) if e != ""]
    if examples:
        prop["description"] += " Example" + ("s: " if len(examples) > 1 else ": ")
        prop["description"] += ", ".join(f"`{e}`" for e in examples) + "."
    prop["examples"] = [""]


def _inlined(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A `$ref` to the form's own definitions (an enum) replaced by the definition: the form's schema is
    copied into the operation, where those references would not resolve."""
    ref = schema.get("$ref", "")
    return {k: v for k, v in defs[ref.rsplit("/", 1)[-1]].items() if k != "title"} if ref else schema


# --- answers --------------------------------------------------------------------------------------------
class Problem(BaseModel):
    row: int | None = Field(description="Spreadsheet row (the header is row 1), when about a row.")
    column: str | None = Field(description="CSV column, when about a column.")
    field: str | None = Field(description="Form field or parameter, when about one.")
    reason: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the API (services/upload/errors.py)."""

    error: str = Field(examples=["invalid form fields"])
    problems: list[Problem] = Field(
        examples=[[{"row": None, "column": None, "field": "email", "reason": "invalid email address"}]]
    )


OPTIONS_EXAMPLE = {"max_width": 800, "format": "webp", "quality": "auto", "target": 70.0}


class UploadAccepted(BaseModel):
    request_id: str = Field(examples=[EXAMPLE_ID])
    status: RequestStatus
    status_url: str = Field(examples=[f"http://127.0.0.1:8000/status/{EXAMPLE_ID}"])
    output_csv_url: str = Field(examples=[f"http://127.0.0.1:8000/output/{EXAMPLE_ID}"])
    products: int = Field(examples=[3])
    images: int = Field(examples=[7])
    options: ImageOptions = Field(
        description="The image options as they will be applied: only those given (`{}`: the defaults), "
        "with `auto`'s default `target` filled in.",
        examples=[OPTIONS_EXAMPLE],
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Only with a `webhook_url`: the secret this request's webhooks are signed with "
        "(Standard Webhooks). Shown in this answer alone (and in a replay of it, for the same "
        "`Idempotency-Key`): keep it to verify the deliveries.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwCm4wGvbpZMI="],
    )


# The header parameter of POST /upload (read by hand in idempotency.py, so documented here).
IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes the upload safe to retry: within 24 hours, the same key with the same body (CSV "
    "and fields) answers as the first upload was answered (the same `request_id`; header "
    "`Idempotent-Replayed: true`) and starts nothing new; with a different body, 422. Keys are per API "
    "key when keys are on. 1 to 255 visible ASCII characters: a fresh UUID per upload, e.g. "
    "`3f1c2a9e-8d4b-4c1e-9a57-0b6c7d8e9f10`.",
    # No `example`: Swagger UI's "Try it out" would send it with every upload, and the second (another
    # CSV, the same key) would be refused.
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
}
IN_PROGRESS: dict[str, Any] = {
    "model": ErrorBody,
    "description": "An upload with the same `Idempotency-Key` is still being stored: retry after "
    "`Retry-After` seconds for its answer.",
}


class DeletionBody(BaseModel):
    request_id: str = Field(examples=[EXAMPLE_ID])
    deleted: bool = Field(
        description="Always true: the request, its rows and outcomes are gone; its images are going.",
        examples=[True],
    )


class Failure(BaseModel):
    index: int = Field(description="The image's position in the request, from 0.")
    url: str
    reason: str = Field(examples=["HTTP 404 from origin"])


class FailedImage(BaseModel):
    url: str
    reason: str


class OutputDetails(BaseModel):
    """What one compressed image became (fields are null for images compressed before image options)."""

    format: str | None = Field(description="The output's format: jpeg, webp, avif, png, gif, ...")
    width: int | None
    height: int | None
    bytes: int | None
    quality: int | None = Field(
        description="The encoder quality used (with quality=auto, the one it chose); null for a kept "
        "original or a lossless output."
    )
    score: float | None = Field(
        description="With quality=auto: the SSIMULACRA2 score the chosen quality measured (on the sample "
        "the search scores)."
    )
    kept_original: bool = Field(description="The original (without its metadata) was smaller: kept.")


class ProductDetail(BaseModel):
    serial_number: str
    product_name: str
    input_urls: list[str]
    output_urls: list[str | None] = Field(
        description="Aligned with input_urls; null while pending or failed."
    )
    output_details: list[OutputDetails | None] = Field(
        description="Aligned with input_urls; null while pending or failed."
    )
    failed: list[FailedImage]
    skipped: list[str] = Field(description="Input URLs a cancel skipped (never fetched).")


class Page(BaseModel):
    offset: int
    limit: int
    total_products: int


class NotificationAttempt(BaseModel):
    channel: Literal["email", "webhook"]
    notification_id: str
    attempt: int
    started_at: datetime
    outcome: Literal["ok", "retryable", "permanent"]
    status: int | None
    detail: str
    duration_s: float
    next_delay_s: float | None


class RequestSummary(BaseModel):
    """A request as GET /requests lists it."""

    request_id: str = Field(examples=[EXAMPLE_ID])
    status: RequestStatus = Field(
        description="PENDING until every image has an outcome, then COMPLETED; after a cancel, CANCELLING "
        "until the images in flight finish, then CANCELLED."
    )
    progress: float = Field(description="Percent of images with an outcome (skipped ones included).")
    total_images: int
    no_img_compressed: int
    no_img_failed: int
    no_img_skipped: int = Field(description="Images a cancel skipped: never fetched.")
    created_at: datetime
    completed_at: datetime | None = Field(description="When it became COMPLETED or CANCELLED.")


class RequestList(BaseModel):
    requests: list[RequestSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class StatusBody(RequestSummary):
    total_products: int
    bytes_in: int
    bytes_out: int
    failures: list[Failure] = Field(description="The first 100 failures.")
    output_csv_url: str | None = Field(description="Set once the request is COMPLETED or CANCELLED.")
    options: ImageOptions = Field(
        description="The request's image options; null: not given (the default applies).",
        examples=[{**OPTIONS_EXAMPLE, "max_height": None}],
    )
    product_details: list[ProductDetail] | None = Field(None, description="Only with view=full.")
    page: Page | None = Field(None, description="Only with view=full.")
    notifications: list[NotificationAttempt] | None = Field(None, description="Only with view=full.")


class ImageSnapshot(BaseModel):
    product: str
    serial_number: str
    input_url: str
    status: OutcomeStatus | None = Field(description="null while the image is waiting for its outcome")
    output_url: str | None
    input_bytes: int | None
    output_bytes: int | None
    kept_original: bool = Field(description="the original was smaller than any re-encoding")
    reason: str | None = Field(description="why it failed, or was skipped")
    output_details: OutputDetails | None = Field(description="once compressed: format, size, quality, score")


class ProgressSnapshot(StatusBody):
    """The data of each `progress` event: the summary of GET /status, plus the first images."""

    images: list[ImageSnapshot] = Field(
        description="The first images (up to 24), in CSV order: before/after."
    )


class RenotifyRequest(BaseModel):
    request_id: str = Field(examples=[EXAMPLE_ID])


class RenotifyQueued(BaseModel):
    request_id: str
    notification: Literal["queued"]


class Health(BaseModel):
    status: Literal["ok"]
    service: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: bool
    broker: bool


# --- error answers, per route ---------------------------------------------------------------------------
_WHEN = {
    400: "The request is malformed: a missing file, broken CSV syntax, bad parameters.",
    401: "API keys are on and no valid key was sent.",
    404: "No such request or image.",
    409: "The request is not in a state for this: not finished yet (output, re-send), or already "
    "finished (cancel).",
    413: "The file, its rows or its images exceed a limit.",
    415: "The file is not a UTF-8 CSV.",
    422: "The CSV parses but its content is wrong, or a form field is invalid: `problems` names each.",
    429: "Too soon: a `Retry-After` header says when to try again.",
    503: "The database or broker is unavailable: nothing was done; retry after `Retry-After` seconds.",
}


Responses = dict[int | str, dict[str, Any]]


def errors(*statuses: int) -> Responses:
    """The `responses` entries of the error answers a route really gives, all in the one error shape."""
    return {status: {"model": ErrorBody, "description": _WHEN[status]} for status in statuses}


def ok(
    description: str, model: type[BaseModel] | None = None, media_type: str = "", binary: bool = False
) -> Responses:
    """The `responses` entry of a 200 answer: a model (JSON), or a body of another media type."""
    if model is not None:
        return {200: {"model": model, "description": description}}
    schema = {"type": "string", "format": "binary"} if binary else {"type": "string"}
    return {200: {"description": description, "content": {media_type: {"schema": schema}}}}


def install_openapi(app: FastAPI) -> None:
    """Our schema, without the 422 `HTTPValidationError` FastAPI adds to every route with parameters: we
    answer invalid parameters with 400 in the one error shape (errors.py), which each route documents."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=TAGS,
            )
            for path in schema["paths"].values():
                for operation in path.values():
                    invalid = operation.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in str(invalid):
                        del operation["responses"]["422"]
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
