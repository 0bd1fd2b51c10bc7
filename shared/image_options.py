"""Per-request image options: the box every output fits in, its format, and its quality.

One model, used wherever options come in (the upload form; the documented form, the web page and the
CLI reuse it), are stored (the request document), travel (`ImageRequested`) and are shown (status, output
CSV, email). Every field is optional, and a request without options behaves exactly as before: today's
format rule and the service's configured quality (`IMAGEPIPE_QUALITY`).

Values arrive as form text, so each field accepts text and says what is wrong in words a caller can act
on; a `ValidationError` from here names the field in its `loc`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

MAX_SIDE = 16383  # WebP's limit; also far beyond any product page
MIN_QUALITY, MAX_QUALITY = 1, 95  # above 95 JPEG and WebP grow fast for nothing visible
MIN_TARGET, MAX_TARGET = 10.0, 95.0  # SSIMULACRA2: 30 low, 50 medium, 70 high, 90 visually lossless
AUTO = "auto"
# The SSIMULACRA2 score `quality=auto` aims for when no `target` is given. Calibrated, not guessed, by
# `python -m bench --section options` (docs/benchmarks.md, "Image options"): over a varied photo corpus
# (smooth, noisy, detailed, product and mixed photos), the highest target whose outputs take no more
# bytes in total than fixed quality 50 while its worst image scores no worse than quality 50's worst.
# Measured: 51 takes 94.5% of quality 50's bytes and its worst image scores 42.5 against 37.0; 52 takes
# 100.8%. (SSIMULACRA2 50 is "medium quality": quality 50's mean on that corpus is 61.7, its worst 37.0.)
DEFAULT_TARGET = 51.0

FIELDS = ("max_width", "max_height", "format", "quality", "target")


class OutputFormat(StrEnum):
    JPEG = "jpeg"
    WEBP = "webp"
    AVIF = "avif"


_FORMAT_ALIASES = {"jpg": OutputFormat.JPEG}


def _invalid(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError("invalid_image_option", message, context)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _blank_to_none(value: object) -> object:
    """An empty form field (what a web form sends for an unset option) means "not given"."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _whole_number(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _invalid(f"must be {what} from {low} to {high}, not {_shown(value)}")
    try:
        number = int(value)
    except ValueError:
        raise _invalid(f"must be {what} from {low} to {high}, not {_shown(value)!r}") from None
    if not low <= number <= high:
        raise _invalid(f"must be {what} from {low} to {high}, not {number}")
    return number


class ImageOptions(BaseModel):
    """What the caller asked of every output of one request; None everywhere means today's behaviour."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_width: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SIDE,
        description="Fit every image inside this width (pixels), keeping its aspect ratio; never upscales.",
        examples=[800],
    )
    max_height: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SIDE,
        description="Fit every image inside this height (pixels), keeping its aspect ratio; never upscales.",
        examples=[800],
    )
    format: OutputFormat | None = Field(
        default=None,
        description="Output format. Absent: JPEG for opaque images, WebP for transparent ones. `jpeg` "
        "flattens transparency onto white. Animations stay animated (`jpeg` leaves them animated WebP).",
    )
    quality: Annotated[int, Field(ge=MIN_QUALITY, le=MAX_QUALITY)] | Literal["auto"] | None = Field(
        default=None,
        description=f"Encoder quality {MIN_QUALITY}-{MAX_QUALITY}, or `auto`: per image, the lowest quality "
        "whose SSIMULACRA2 score meets `target`. Absent: the service's configured quality (50).",
        examples=[AUTO, 75],
    )
    target: float | None = Field(
        default=None,
        ge=MIN_TARGET,
        le=MAX_TARGET,
        description=f"With `quality=auto`: the SSIMULACRA2 score to meet (default {DEFAULT_TARGET:g}; 50 is "
        "medium, 70 high, 90 visually lossless).",
        examples=[70],
    )

    @field_validator("max_width", "max_height", mode="before")
    @classmethod
    def _side(cls, value: object) -> int | None:
        value = _blank_to_none(value)
        return None if value is None else _whole_number(value, 1, MAX_SIDE, "a whole number of pixels")

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: object) -> OutputFormat | None:
        value = _blank_to_none(value)
        if value is None or isinstance(value, OutputFormat):
            return value
        name = str(value).lower()
        if name in _FORMAT_ALIASES:
            return _FORMAT_ALIASES[name]
        if name not in {f.value for f in OutputFormat}:
            allowed = ", ".join(f.value for f in OutputFormat)
            raise _invalid(f"must be one of {allowed}, not {_shown(value)!r}")
        return OutputFormat(name)

    @field_validator("quality", mode="before")
    @classmethod
    def _quality(cls, value: object) -> int | str | None:
        value = _blank_to_none(value)
        if value is None:
            return None
        if isinstance(value, str) and value.lower() == AUTO:
            return AUTO
        return _whole_number(value, MIN_QUALITY, MAX_QUALITY, f"'{AUTO}' or a whole number")

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: object, info: ValidationInfo) -> float | None:
        value = _blank_to_none(value)
        if value is None:
            return None
        if "quality" in info.data and info.data["quality"] != AUTO:  # absent: quality itself was invalid
            raise _invalid(f"applies only with quality={AUTO}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = float("nan")
        if not MIN_TARGET <= number <= MAX_TARGET:  # NaN fails this too
            raise _invalid(
                f"must be a SSIMULACRA2 score from {MIN_TARGET:g} to {MAX_TARGET:g}, not {_shown(value)!r}"
            )
        return number

    # --- what the rest of the system asks of it ---------------------------------------------------------

    @property
    def auto(self) -> bool:
        return self.quality == AUTO

    @property
    def resizes(self) -> bool:
        return self.max_width is not None or self.max_height is not None

    @property
    def effective_target(self) -> float:
        return self.target if self.target is not None else DEFAULT_TARGET

    def resolved(self) -> ImageOptions:
        """With the defaults a later deploy could change pinned now: `auto`'s target. Stored at upload, so a
        request is compressed as it was described when it was accepted."""
        if self.auto and self.target is None:
            return self.model_copy(update={"target": DEFAULT_TARGET})
        return self

    def is_default(self) -> bool:
        return all(getattr(self, name) is None for name in FIELDS)

    def stored(self) -> dict[str, Any]:
        """The options as stored on the request document: only what was given."""
        return self.model_dump(mode="json", exclude_none=True)

    def cache_key(self) -> str:
        """Canonical text of the options: part of every key under which an output is stored or reused.
        Empty for the defaults, so outputs of requests without options keep the keys they always had."""
        given = self.stored()
        return json.dumps(given, sort_keys=True, separators=(",", ":")) if given else ""

    def describe(self) -> str:
        """One line for people (email, output CSV): `max_width=800; format=webp; quality=auto; target=60`."""
        given = self.stored()
        return "; ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in given.items())

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> ImageOptions:
        """The options of a stored request (or event); documents from before options existed have none."""
        return cls.model_validate(stored or {})


class InvalidImageOptions(ValueError):
    """Options that cannot be used; `problems` holds (field, reason) pairs, one per bad field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {r}" for f, r in problems))
        self.problems = problems


def parse_image_options(values: dict[str, object]) -> ImageOptions:
    """Options from form-like values (text, or None when absent); raises InvalidImageOptions naming every
    bad field."""
    try:
        return ImageOptions.model_validate({k: v for k, v in values.items() if k in FIELDS}).resolved()
    except ValidationError as exc:
        named = [(str(e["loc"][0]) if e["loc"] else "options", e["msg"]) for e in exc.errors()]
        raise InvalidImageOptions([(field, f"{field} {reason}") for field, reason in named]) from None
