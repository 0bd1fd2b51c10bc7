"""The whole system as real processes, for end-to-end and fault tests.

Services run as subprocesses started by the same supervisor `make run` uses; the image origin, webhook
receiver and SMTP server are real servers in the test process.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

from localrun.supervisor import SERVICES, Supervisor, free_port, wait_for_port
from shared.settings import Settings
from tests.conftest import eventually, settings_env
from tests.origin import Origin


@dataclass
class SmtpSink:
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def for_request(self, request_id: str) -> list[EmailMessage]:
        return [m for m in self.messages if m.get("X-Imagepipe-Request-Id") == request_id]


def csv_attachment(message: EmailMessage) -> str:
    for part in message.iter_attachments():
        if part.get_content_type() == "text/csv":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8-sig")
    raise AssertionError("no CSV attachment")


@dataclass
class Stack:
    settings: Settings
    supervisor: Supervisor
    origin: Origin
    smtp: SmtpSink
    smtp_controller: Controller
    http: httpx.AsyncClient

    @property
    def api(self) -> str:
        return self.settings.base_url

    def health_port(self, process: str) -> int:
        """The port `process` (a service, or compressor-N) serves /healthz, /readyz and /metrics on: a free
        one it chose itself, as its log says (the last time it started)."""
        log_file = self.supervisor.processes[process].log_file
        assert log_file is not None
        ports = [
            int(found.group(1))
            for line in log_file.read_text().splitlines()
            if "health_listening" in line and (found := re.search(r"\bport\W+(\d+)", line))
        ]
        assert ports, f"{process} has not logged its health port yet"
        return ports[-1]

    def start_service(self, service: str, instance: str | None = None) -> None:
        self.supervisor.start_service(service, instance)

    async def upload(self, csv_text: str, **fields: str) -> dict[str, Any]:
        data = {"email": "buyer@example.com", **fields}
        response = await self.http.post(
            f"{self.api}/upload", files={"file": ("products.csv", csv_text.encode(), "text/csv")}, data=data
        )
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    async def status(self, request_id: str, **params: Any) -> dict[str, Any]:
        response = await self.http.get(f"{self.api}/status/{request_id}", params=params)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_completed(self, request_id: str, timeout: float = 60) -> dict[str, Any]:
        async def completed() -> dict[str, Any] | None:
            self.supervisor.poll()  # restart what died, as make run does
            body = await self.status(request_id)
            return body if body["status"] == "COMPLETED" else None

        return await eventually(completed, timeout=timeout, interval=0.25)  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.supervisor.stop_all(grace=15)
        await self.http.aclose()
        self.smtp_controller.stop()
        await self.origin.stop()


async def start_stack(
    settings: Settings, log_dir: Path, compressors: int = 1, services: tuple[str, ...] = SERVICES
) -> Stack:
    origin = await Origin().start()
    sink = SmtpSink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    port = free_port()
    settings = settings.model_copy(update={"port": port, "smtp_host": "127.0.0.1", "smtp_port": smtp_port})
    supervisor = Supervisor(settings_env(settings), log_dir=log_dir)
    stack = Stack(settings, supervisor, origin, sink, controller, httpx.AsyncClient(timeout=30))
    supervisor.start_services(compressors, services=services)
    wait_for_port("127.0.0.1", port, 30, "the API")
    return stack
