"""`make run` turns the RabbitMQ console on: checked on a node of our own (never the machine's broker)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from localrun import broker
from tests.private_broker import PrivateBroker, available


@pytest.fixture
def node() -> Iterator[PrivateBroker]:
    if not available():
        pytest.fail("rabbitmq-server is not installed (make test installs what it needs on Debian)")
    node = PrivateBroker()
    node.start()
    yield node
    node.stop()


def test_the_console_is_turned_on_once_and_answers(
    node: PrivateBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{node.console_port}/"
    with pytest.raises(httpx.TransportError):
        httpx.get(url)  # off: the node starts with no plugin

    assert broker.ensure_console(node.url, node=node.name, port=node.console_port, env=node.env) == url

    overview = httpx.get(f"{url}api/overview", auth=("guest", "guest"))
    assert overview.status_code == 200 and overview.json()["node"] == node.name
    # Idempotent, and cheap once on: no second `rabbitmq-plugins` run.
    monkeypatch.setattr(broker.subprocess, "run", lambda *a, **k: pytest.fail("ran rabbitmq-plugins again"))
    assert broker.ensure_console(node.url, node=node.name, port=node.console_port, env=node.env) == url
