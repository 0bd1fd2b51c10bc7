from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright
from pydantic import SecretStr

from localrun.supervisor import Supervisor, free_port, wait_for_port
from tests.conftest import delete_topology, make_settings, settings_env
from tests.stack import Stack, start_stack

# Legacy: given to the stack to show that it no longer signs new requests' webhooks.
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="session")
async def stack(secantus: str, tmp_root: Path) -> AsyncIterator[Stack]:
    settings = make_settings(secantus, tmp_root / "e2e", webhook_secret=SecretStr(WEBHOOK_SECRET))
    (tmp_root / "e2e").mkdir(exist_ok=True)
    stack = await start_stack(settings, tmp_root / "e2e", compressors=2)
    yield stack
    await stack.close()
    await delete_topology(settings)


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright: never a downloaded browser."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            "/usr/bin/chromium is missing: `make test` installs it (apt-get install chromium) as root"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        await browser.close()


API_KEY = "k-" + "c" * 30


@pytest.fixture
async def secured_api(stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    """A second gateway on the same system, with API keys on: its base URL."""
    settings = stack.settings.model_copy(update={"port": free_port(), "api_keys": [SecretStr(API_KEY)]})
    supervisor = Supervisor(settings_env(settings), log_dir=tmp_path)
    supervisor.start_service("upload")
    await asyncio.to_thread(wait_for_port, "127.0.0.1", settings.port, 30, "the secured API")
    yield settings.base_url
    supervisor.stop_all(grace=10)
