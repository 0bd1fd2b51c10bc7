"""The OpenAPI document against the running gateway: schemathesis generates calls from it, valid and
invalid ones (no 5xx, and no answer outside the document), and /docs uploads the sample CSV through
"Try it out" in Chromium."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from playwright.async_api import Browser, expect
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.image_options import DEFAULT_TARGET
from tests.stack import Stack

SAMPLE_CSV = Path(__file__).resolve().parents[2] / "samples" / "products.csv"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 60  # per operation and mode: about half a minute for the whole API


def test_every_answer_is_documented_and_none_is_a_server_error(stack: Stack) -> None:
    # Run from the plain API rather than `schema.parametrize()`: its lazy loading does not work on pytest 9.
    schema = schemathesis.openapi.from_url(f"{stack.api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    started = time.monotonic()
    calls: Counter[int] = Counter()
    for operation in operations:
        # The document's own examples first (they must work: /docs offers them), then generated calls.
        examples = schema.get_strategies_from_examples(operation)
        strategies = [(st.one_of(examples), GenerationMode.POSITIVE)] if examples else []  # 202s
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append((operation.as_strategy(generation_mode=mode), mode))
        for strategy, mode in strategies:

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def call(case: Any) -> None:
                response = case.call_and_validate(base_url=stack.api, checks=CHECKS, timeout=30)
                calls[response.status_code] += 1

            try:
                call()
            except Unsatisfiable:
                # Nothing to make invalid: an operation without parameters or body has no negative case.
                assert mode == GenerationMode.NEGATIVE, operation.label
    print(
        f"schemathesis: {len(operations)} operations, answers {dict(calls)}, {time.monotonic() - started:.1f} s"
    )
    assert calls[202] and calls[400] and calls[404]  # it did reach the upload, the checks and the lookups


async def test_docs_try_it_out_uploads_the_sample_csv(stack: Stack, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{stack.api}/docs")
    upload = page.locator("#operations-uploads-upload_upload_post")
    await upload.locator(".opblock-summary").click()
    await upload.get_by_role("button", name="Try it out").click()
    await upload.locator('input[type="file"]').set_input_files(SAMPLE_CSV)
    await upload.get_by_placeholder("email").fill("docs@example.com")
    await upload.get_by_role("button", name="Execute").click()

    answer = upload.locator(".live-responses-table .response")
    await expect(answer.locator(".response-col_status")).to_have_text("202", timeout=15_000)
    body = json.loads(await answer.locator(".response-col_description pre").first.inner_text())
    assert (body["products"], body["images"]) == (3, 7)  # the sample CSV, as uploaded by the browser
    assert body["options"] == {}  # the image options' fields start empty: nothing sent, the defaults
    status = await stack.status(body["request_id"])
    assert status["total_images"] == 7

    # The image options are fields of the same form.
    await upload.get_by_placeholder("max_width").fill("320")
    await upload.get_by_placeholder("quality").fill("auto")
    await upload.get_by_role("button", name="Execute").click()
    await expect(answer.locator(".response-col_description pre").first).to_contain_text('"max_width": 320')
    body = json.loads(await answer.locator(".response-col_description pre").first.inner_text())
    assert body["options"] == {"max_width": 320, "quality": "auto", "target": DEFAULT_TARGET}
    await page.close()
