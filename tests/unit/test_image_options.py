"""Image options: parsing form text, naming every bad field, and the forms they are stored and shown in."""

from __future__ import annotations

import pytest

from shared.image_options import (
    DEFAULT_TARGET,
    ImageOptions,
    InvalidImageOptions,
    OutputFormat,
    parse_image_options,
)


def test_nothing_given_means_the_defaults() -> None:
    options = parse_image_options({})
    assert options == ImageOptions() and options.is_default()
    assert (options.stored(), options.cache_key(), options.describe()) == ({}, "", "")
    assert parse_image_options(dict.fromkeys(("max_width", "format", "quality", "target"), " ")).is_default()


def test_form_text_is_parsed_and_normalised() -> None:
    options = parse_image_options(
        {"max_width": " 800 ", "max_height": "600", "format": "JPG", "quality": "AUTO", "target": "72.5"}
    )
    assert options == ImageOptions(
        max_width=800, max_height=600, format=OutputFormat.JPEG, quality="auto", target=72.5
    )
    assert options.auto and options.resizes and options.effective_target == 72.5
    assert parse_image_options({"quality": "95", "format": "avif"}).quality == 95


def test_auto_without_a_target_is_pinned_to_the_default_target_when_accepted() -> None:
    options = parse_image_options({"quality": "auto"})
    assert options.target == DEFAULT_TARGET
    assert options.describe() == f"quality=auto; target={DEFAULT_TARGET:g}"
    assert ImageOptions(quality="auto").effective_target == DEFAULT_TARGET


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"quality": "0"}, "quality", "from 1 to 95, not 0"),
        ({"quality": "96"}, "quality", "not 96"),
        ({"quality": "50.5"}, "quality", "'auto' or a whole number"),
        ({"quality": "best"}, "quality", "not 'best'"),
        ({"format": "bmp"}, "format", "one of jpeg, webp, avif, not 'bmp'"),
        ({"max_width": "-1"}, "max_width", "from 1 to 16383, not -1"),
        ({"max_width": "0"}, "max_width", "not 0"),
        ({"max_height": "16384"}, "max_height", "not 16384"),
        ({"max_height": "wide"}, "max_height", "whole number of pixels"),
        ({"target": "70"}, "target", "only with quality=auto"),
        ({"quality": "80", "target": "70"}, "target", "only with quality=auto"),
        ({"quality": "auto", "target": "9"}, "target", "from 10 to 95"),
        ({"quality": "auto", "target": "nan"}, "target", "not 'nan'"),
        ({"quality": "auto", "target": "high"}, "target", "not 'high'"),
        ({"quality": b"50"}, "quality", "whole number"),  # a file sent as the field
    ],
)
def test_a_bad_value_names_its_field_and_what_is_allowed(
    values: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidImageOptions) as caught:
        parse_image_options(values)
    ((named, reason),) = caught.value.problems
    assert named == field and reason.startswith(f"{field} ") and words in reason


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(InvalidImageOptions) as caught:
        parse_image_options({"max_width": "-1", "format": "bmp", "quality": "0", "target": "70"})
    # the target is not blamed for a quality that was itself invalid
    assert [field for field, _ in caught.value.problems] == ["max_width", "format", "quality"]


def test_stored_form_round_trips_and_old_documents_have_none() -> None:
    options = parse_image_options({"max_height": "300", "format": "webp", "quality": "auto", "target": "65"})
    assert options.stored() == {"max_height": 300, "format": "webp", "quality": "auto", "target": 65.0}
    assert ImageOptions.from_stored(options.stored()) == options
    assert ImageOptions.from_stored(None) == ImageOptions() == ImageOptions.from_stored({})
    assert ImageOptions.from_stored({"max_width": 10, "from_a_newer_release": 1}) == ImageOptions(
        max_width=10
    )


def test_the_cache_key_is_canonical_and_tells_options_apart() -> None:
    a = ImageOptions(format=OutputFormat.WEBP, max_width=800)
    b = parse_image_options({"max_width": "800", "format": "WEBP"})
    assert a.cache_key() == b.cache_key() == '{"format":"webp","max_width":800}'
    assert a.cache_key() != ImageOptions(format=OutputFormat.WEBP, max_width=801).cache_key()
    assert a.describe() == "max_width=800; format=webp"


def test_the_json_schema_documents_every_field_for_the_api_docs() -> None:
    properties = ImageOptions.model_json_schema()["properties"]
    assert set(properties) == {"max_width", "max_height", "format", "quality", "target"}
    assert all(p.get("description") for p in properties.values())
    assert properties["max_width"]["anyOf"][0] == {"maximum": 16383, "minimum": 1, "type": "integer"}
