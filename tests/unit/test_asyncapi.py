"""docs/asyncapi.yaml: in sync with the code, valid AsyncAPI 3 (the official JSON schema, from the
@asyncapi/specs package), every reference resolving, and saying what the code does: each event's routing
key, payload, publishers and consumers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT7

from shared.events import EVENT_TYPES, Event
from tests.devtools import data_file
from tools import asyncapi

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "docs" / "architecture.md"

Doc = dict[str, Any]

# One instance of every event, as its publisher sends it: the document must describe these.
EXAMPLES: dict[str, Event] = {
    "ImageRequested": EVENT_TYPES["ImageRequested"].model_validate(
        {
            "request_id": "r1",
            "index": 0,
            "url": "https://e.x/a.jpg",
            "file_id": "f1",
            "options": {"max_width": 800, "format": "webp", "quality": "auto", "target": 70},
        }
    ),
    "ImageCompressed": EVENT_TYPES["ImageCompressed"](
        request_id="r1",
        index=0,
        url="https://e.x/a.jpg",
        file_id="f1",
        content_type="image/jpeg",
        input_bytes=10,
        output_bytes=5,
    ),
    "ImageFailed": EVENT_TYPES["ImageFailed"](
        request_id="r1", index=1, url="https://e.x/b.jpg", reason="404"
    ),
    "ImageSkipped": EVENT_TYPES["ImageSkipped"](
        request_id="r1", index=2, url="https://e.x/c.jpg", reason="cancelled before it was started"
    ),
    "RequestCompleted": EVENT_TYPES["RequestCompleted"](
        request_id="r1", total_images=3, compressed=1, failed=1, status="CANCELLED", skipped=1
    ),
    "NotificationRequested": EVENT_TYPES["NotificationRequested"](request_id="r1"),
}


@pytest.fixture(scope="module")
def doc() -> Doc:
    loaded: Doc = yaml.safe_load(asyncapi.OUTPUT.read_text())
    return loaded


def test_the_committed_document_is_what_the_code_generates() -> None:
    assert asyncapi.OUTPUT.read_text() == asyncapi.render(asyncapi.document()), (
        "docs/asyncapi.yaml is out of date: run `python -m tools.asyncapi` (make asyncapi)"
    )


def test_the_check_command_fails_on_a_stale_document(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert asyncapi.main(["--check"]) == 0
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(asyncapi.OUTPUT.read_text().replace("image.requested", "image.wanted"))
    monkeypatch.setattr(asyncapi, "OUTPUT", stale)
    assert asyncapi.main(["--check"]) == 1


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(
        data_file("asyncapi-3.0.0.json", "`make devtools` takes it from npm's @asyncapi/specs").read_text()
    )
    definitions = [(uri, DRAFT7.create_resource(s)) for uri, s in schema["definitions"].items()]
    registry: Registry = Registry().with_resources(
        [(schema["$id"], DRAFT7.create_resource(schema)), *definitions]
    )
    return jsonschema.Draft7Validator(schema, registry=registry)


def test_the_document_is_valid_asyncapi_3(doc: Doc) -> None:
    validator = _validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)
    broken = {
        **doc,
        "operations": {"x": {"action": "publish", "channel": {"$ref": "#/channels/imageRequested"}}},
    }
    assert not validator.is_valid(broken), "the schema check accepts an AsyncAPI 2 action"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(doc: Doc, ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and key in node, f"{ref} does not resolve"
        node = node[key]
    return node


def test_every_reference_resolves(doc: Doc) -> None:
    refs = set(_refs(doc))
    assert refs
    for ref in refs:
        _resolve(doc, ref)


def test_operations_use_their_channels_messages(doc: Doc) -> None:
    for name, operation in doc["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), name


def _channel_of(doc: Doc, event: str) -> tuple[str, Doc]:
    (found,) = [(key, c) for key, c in doc["channels"].items() if event in c["messages"]]
    return found


def _operations(doc: Doc, event: str, action: str) -> set[str]:
    channel = f"#/channels/{_channel_of(doc, event)[0]}"
    return {
        tag["name"]
        for op in doc["operations"].values()
        if op["action"] == action and op["channel"]["$ref"] == channel
        for tag in op["tags"]
    }


@pytest.mark.parametrize("event", EVENT_TYPES)
def test_each_event_has_its_routing_key_a_publisher_and_its_consumers(doc: Doc, event: str) -> None:
    _, channel = _channel_of(doc, event)
    assert channel["address"] == EVENT_TYPES[event].routing_key
    assert channel["bindings"]["amqp"]["exchange"]["name"] == "imagepipe.events"
    consumers = {service for service, routes in asyncapi.CONSUMERS.items() if EVENT_TYPES[event] in routes}
    assert consumers, f"nobody consumes {event}: its mandatory publish would fail"
    assert _operations(doc, event, "receive") == consumers
    assert _operations(doc, event, "send"), f"nobody publishes {event}"


def _architecture_table() -> dict[str, tuple[str, str, str]]:
    """event -> (routing key, first publishing service, consumers) from docs/architecture.md's table."""
    rows = re.findall(
        r"^\| `(\w+)` \| `([\w.]+)` \| (\w+)[^|]*\| ([^|]+) \|$", ARCHITECTURE.read_text(), re.MULTILINE
    )
    return {event: (key, publisher, consumers.strip()) for event, key, publisher, consumers in rows}


@pytest.mark.parametrize("event", EVENT_TYPES)
def test_the_document_agrees_with_the_architecture_page(doc: Doc, event: str) -> None:
    key, publisher, consumers = _architecture_table()[event]
    assert key == EVENT_TYPES[event].routing_key
    assert _operations(doc, event, "send") == {publisher}
    assert _operations(doc, event, "receive") == set(re.findall(r"\w+", consumers))


@pytest.mark.parametrize("event", EVENT_TYPES)
def test_the_payload_schema_describes_what_the_publisher_sends(doc: Doc, event: str) -> None:
    message = _resolve(doc, _channel_of(doc, event)[1]["messages"][event]["$ref"])
    # Rooted in the document, where its references (ImageRequested's options) point.
    schema = {**_resolve(doc, message["payload"]["$ref"]), "components": doc["components"]}
    jsonschema.Draft7Validator.check_schema(schema)
    sent = json.loads(EXAMPLES[event].model_dump_json())
    jsonschema.validate(sent, schema, cls=jsonschema.Draft7Validator)
    without_request = {k: v for k, v in sent.items() if k != "request_id"}
    assert not jsonschema.Draft7Validator(schema).is_valid(without_request)
    if "options" in sent:  # what the options allow is in the document too
        bad = {**sent, "options": {**sent["options"], "format": "bmp"}}
        assert not jsonschema.Draft7Validator(schema).is_valid(bad)
    headers = _resolve(doc, message["headers"]["$ref"])
    assert {"request_id", "x-attempt"} <= set(headers["properties"])
