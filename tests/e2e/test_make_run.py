"""`make run` as a person starts it: one banner saying where to look, every log line in one format, the
page, the docs and the console answering; Ctrl-C stops it all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

from localrun.supervisor import free_port
from shared.settings import Settings
from tests.conftest import AMQP_URL, delete_topology

HUMAN_LINE = re.compile(r"^\d\d:\d\d:\d\d (debug|info|warning|error|critical) +\S+ +\S+")
BANNER_END = "try "


def test_make_run_prints_where_to_look_and_logs_in_one_format(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPIPE_")}
    env.update(
        IMAGEPIPE_PORT=str(port),
        IMAGEPIPE_DATA_DIR=str(tmp_path),
        IMAGEPIPE_AMQP_URL=AMQP_URL,
        IMAGEPIPE_BUS_PREFIX=f"test-{tag}",
        IMAGEPIPE_MONGO_DB=f"test_{tag}",
        IMAGEPIPE_COMPRESSORS="1",
        IMAGEPIPE_SHUTDOWN_GRACE="5",
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "localrun"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert run.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any(line.lstrip().startswith(BANNER_END) for line in lines) and time.monotonic() < deadline:
            assert run.poll() is None, "".join(lines)
            time.sleep(0.2)
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/docs" in banner, banner
        assert re.search(rf"console +http://127\.0\.0\.1:15672/#/queues .*filter by test-{tag}\.", banner), (
            banner
        )
        assert str(tmp_path / "mail") in banner and "logs" in banner
        with httpx.Client(timeout=10) as http:
            assert http.get(f"http://127.0.0.1:{port}/").status_code == 200
            assert http.get(f"http://127.0.0.1:{port}/docs").status_code == 200
            assert http.get("http://127.0.0.1:15672/api/overview", auth=("guest", "guest")).status_code == 200
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(60)
        reader.join(10)
        asyncio.run(delete_topology(Settings(amqp_url=AMQP_URL, bus_prefix=f"test-{tag}")))
    assert code == 0, "".join(lines)
    text = "".join(lines)
    rule = text.index("─")
    logs = [line for line in (text[:rule] + text[text.rindex("─") + 1 :]).splitlines() if line.strip()]
    assert logs and not [line for line in logs if not HUMAN_LINE.match(line)], logs  # one format, no JSON
    assert any("upload " in line for line in logs) and any("compressor " in line for line in logs)
    assert (tmp_path / "logs" / "secantusdb.log").exists()  # the database's own format stays out of it
