"""Services as real processes: health while dependencies are down, and a prompt, clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from localrun.supervisor import free_port, wait_for_port
from shared.settings import Settings
from tests.conftest import settings_env


def start(service: str, settings: Settings, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{service}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{service}"],
        env={**settings_env(settings), **env},
        stdout=log,
        stderr=log,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


@pytest.mark.parametrize("service", ["status", "compressor", "notifier"])
def test_a_worker_waiting_for_its_database_stops_cleanly_and_reports_not_ready(
    service: str, settings: Settings, tmp_path: Path
) -> None:
    health = free_port()
    unreachable = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    process = start(
        service, settings, tmp_path, IMAGEPIPE_MONGO_URL=unreachable, IMAGEPIPE_HEALTH_PORT=str(health)
    )
    try:
        wait_for_port("127.0.0.1", health, 20, service)
        assert httpx.get(f"http://127.0.0.1:{health}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{health}/readyz").status_code == 503
    finally:
        started = time.monotonic()
        code = stop(process)
    assert code == 0, (tmp_path / f"{service}.log").read_text()[-2000:]
    assert time.monotonic() - started < 5


def test_the_api_serves_while_its_database_is_down_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    unreachable = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    process = start("upload", settings, tmp_path, IMAGEPIPE_MONGO_URL=unreachable, IMAGEPIPE_PORT=str(port))
    try:
        wait_for_port("127.0.0.1", port, 20, "the API")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").json()["database"] is False
        upload = httpx.post(
            f"{base}/upload",
            files={"file": ("p.csv", b"S. No.,Product Name,Input Image Urls\n1,A,https://x.example/a.jpg\n")},
            data={"email": "a@example.com"},
            timeout=30,
        )
        assert upload.status_code == 503, upload.text
        assert "nothing was accepted" in upload.json()["error"]
    finally:
        code = stop(process)
    # uvicorn shuts down gracefully, then re-raises the signal so the process ends "killed by SIGTERM".
    assert code in (0, -signal.SIGTERM), (tmp_path / "upload.log").read_text()[-2000:]
    assert "Application shutdown complete" in (tmp_path / "upload.log").read_text()


def test_ready_workers_report_ready(settings: Settings, tmp_path: Path, mongo: object) -> None:
    health = free_port()
    process = start("status", settings, tmp_path, IMAGEPIPE_HEALTH_PORT=str(health))
    try:
        wait_for_port("127.0.0.1", health, 20, "status")
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{health}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)
        assert "python_info" in httpx.get(f"http://127.0.0.1:{health}/metrics").text
    finally:
        assert stop(process) == 0
