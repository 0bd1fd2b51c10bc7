"""Live progress over real HTTP: GET /status/{id}/events pushes each change and ends at COMPLETED."""

from __future__ import annotations

import asyncio
import json

from localrun.samples import photo
from services.upload.openapi import ProgressSnapshot
from tests.conftest import eventually
from tests.e2e.test_pipeline import product_csv
from tests.stack import Stack


async def read_events(stack: Stack, request_id: str) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    async with stack.http.stream("GET", f"{stack.api}/status/{request_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():  # ends when the server closes the stream
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, line.removeprefix("data: ")))
    return events


async def test_progress_is_pushed_until_the_request_is_final(stack: Stack) -> None:
    names = [f"sse-{n}.jpg" for n in range(4)]
    for n, name in enumerate(names):
        stack.origin.images[name] = photo(400, 300, seed=70 + n)
        stack.origin.delay[name] = 0.8 * n  # outcomes arrive over a few seconds
    accepted = await stack.upload(product_csv([("1", "A", [stack.origin.url(n) for n in names])]))

    events = await asyncio.wait_for(read_events(stack, accepted["request_id"]), 60)

    assert {name for name, _ in events} == {"progress"}
    snapshots = [ProgressSnapshot.model_validate_json(data) for _, data in events]
    assert snapshots[0].status == "PENDING" and snapshots[-1].status == "COMPLETED"
    assert len(snapshots) >= 3  # intermediate progress was pushed, not just the end
    done = [s.no_img_compressed + s.no_img_failed for s in snapshots]
    assert done == sorted(done) and done[-1] == 4
    assert all(image.output_url for image in snapshots[-1].images)
    # A final request: one event, and the stream ends at once.
    again = await asyncio.wait_for(read_events(stack, accepted["request_id"]), 10)
    assert len(again) == 1 and ProgressSnapshot.model_validate_json(again[0][1]).status == "COMPLETED"


async def test_the_access_log_line_of_a_stream_carries_its_request_id(stack: Stack) -> None:
    stack.origin.images["sse-log.jpg"] = photo(200, 100, seed=3)
    accepted = await stack.upload(product_csv([("1", "A", [stack.origin.url("sse-log.jpg")])]))
    request_id = accepted["request_id"]
    await asyncio.wait_for(read_events(stack, request_id), 60)
    assert stack.supervisor.log_dir is not None
    log_file = stack.supervisor.log_dir / "upload.log"

    def stream_lines() -> list[dict[str, object]]:
        records = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
        return [r for r in records if r.get("path") == f"/status/{request_id}/events"]

    lines = await eventually(stream_lines)
    assert all(line["request_id"] == request_id and line["status"] == 200 for line in lines)
