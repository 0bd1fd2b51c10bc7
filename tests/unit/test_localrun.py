"""`make run`'s start-up logic: the install hint, the console's address, the banner, the log format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import localrun.__main__ as make_run
from localrun import broker
from localrun.banner import Where, banner
from localrun.supervisor import free_port
from shared.logging import human_renderer
from shared.settings import Settings


def test_without_rabbitmq_make_run_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.shutil, "which", lambda _: None)
    with pytest.raises(SystemExit) as stopped:
        broker.ensure_rabbitmq(f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    message = str(stopped.value.code)
    assert "apt-get install -y rabbitmq-server" in message and "brew install rabbitmq" in message


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://g:g@127.0.0.1:5672/", "/"),
        ("amqp://g:g@h:5672", "/"),
        ("amqp://g:g@h/%2Fteam", "/team"),
        ("amqp://h/a", "a"),
    ],
)
def test_the_vhost_is_read_from_the_amqp_url(url: str, vhost: str) -> None:
    assert broker.vhost(url) == vhost


def test_a_remote_brokers_console_is_named_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        broker.subprocess, "run", lambda *a, **k: pytest.fail("must not configure a remote broker")
    )
    assert broker.ensure_console("amqp://u:p@rabbit.internal:5672/") == "http://rabbit.internal:15672/"


def test_the_banner_says_where_to_look_for_what(tmp_path: Path) -> None:
    where = Where(
        api="http://127.0.0.1:8000",
        console="http://127.0.0.1:15672/",
        amqp_url="amqp://guest:guest@127.0.0.1:5672/",
        vhost="/",
        bus_prefix="imagepipe",
        mail=f"{tmp_path}/mail (.eml files)",
        logs="this terminal",
        database_log=tmp_path / "logs" / "secantusdb.log",
    )
    text = banner(where)
    for expected in (
        "http://127.0.0.1:8000/docs",
        "http://127.0.0.1:8000/\n",
        "http://127.0.0.1:15672/#/queues ",
        "vhost /; filter by imagepipe.",
        f"{tmp_path}/mail",
        "this terminal",
        "secantusdb.log",
        "upload samples/products.csv",
    ):
        assert expected in text, expected
    assert len(text.splitlines()) <= 10  # short
    assert "rabbitmq-plugins enable" in banner(Where(**{**where.__dict__, "console": None}))


def test_people_get_one_aligned_line_per_event() -> None:
    event = {"timestamp": "12:00:01", "level": "info", "service": "compressor", "event": "image_compressed"}
    line = human_renderer()(None, "info", {**event, "request_id": "r1", "bytes_in": 10})
    assert re.fullmatch(
        r"12:00:01 info +compressor +image_compressed +request_id=r1 bytes_in=10", str(line)
    ), line


def test_the_banner_names_the_api_for_the_cli_when_it_is_not_the_default(tmp_path: Path) -> None:
    where = Where("http://127.0.0.1:8100", None, "amqp://127.0.0.1/", "/", "p", "m", "l", None)
    assert "--wait --url http://127.0.0.1:8100" in banner(where)
    assert "--url" not in banner(Where(**{**where.__dict__, "api": "http://127.0.0.1:8000"}))


def test_a_make_run_on_another_data_folder_gets_queues_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEPIPE_BUS_PREFIX", raising=False)
    settings = Settings(mongo_url=None)
    assert make_run._bus_prefix(settings, make_run.DEFAULT_DATA_DIR.resolve()) == "imagepipe"
    mine, theirs = (make_run._bus_prefix(settings, tmp_path / name) for name in ("var2", "var3"))
    assert mine.startswith("imagepipe-var2-") and theirs.startswith("imagepipe-var3-")
    assert make_run._bus_prefix(settings, tmp_path / "var2") == mine  # the same folder: the same queues
    monkeypatch.setenv("IMAGEPIPE_BUS_PREFIX", "chosen")
    assert make_run._bus_prefix(Settings(mongo_url=None), tmp_path / "var2") == "chosen"


def test_a_second_make_run_on_one_data_folder_is_refused(tmp_path: Path) -> None:
    held = make_run._lock(tmp_path, "try this")
    try:
        with pytest.raises(SystemExit, match=r"Another `make run` is using .*try this"):
            make_run._lock(tmp_path, "try this")
    finally:
        held.close()
    make_run._lock(tmp_path, "try this").close()  # free again once the first is gone
