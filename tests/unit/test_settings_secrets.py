"""Secrets copied from the examples unchanged are refused at startup, naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("api_keys", ["a-real-key-0123456789", "change-me"]),
        ("webhook_secret", "whsec_change-me"),
        ("smtp_password", "CHANGEME"),
        ("amqp_url", "amqp://imagepipe:change-me@rabbitmq:5672/"),
        ("mongo_url", "mongodb://imagepipe:replace_me@mongo:27017/"),
    ],
)
def test_a_placeholder_secret_is_refused_naming_the_setting(setting: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{setting: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert setting in message and "placeholder" in message
    assert "change-me" in message and "input_value" not in message  # the value itself is not logged


def test_a_malformed_webhook_secret_is_refused_at_startup_not_at_the_first_webhook() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(webhook_secret="whsec_not base64!")  # type: ignore[arg-type]
    assert "webhook_secret" in str(info.value) and "base64" in str(info.value)


def test_real_values_are_accepted_and_an_empty_webhook_secret_is_none() -> None:
    settings = Settings(
        api_keys=["3f1c2a9e8d4b4c1e9a570b6c7d8e9f10"],  # type: ignore[list-item]
        webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # type: ignore[arg-type]
        amqp_url="amqp://imagepipe:9c2d1e@rabbitmq:5672/",
        mongo_url="mongodb://127.0.0.1:27017/",
    )
    assert settings.webhook_secret is not None and len(settings.api_keys) == 1
    assert Settings(webhook_secret="").webhook_secret is None  # type: ignore[arg-type]
