"""The imagepipe API as the CLI uses it: one httpx client, the API key, answers turned into outcomes.

Every refusal of the API has one shape, `{"error": ..., "problems": [{row, column, field, reason}]}`;
`Refused` carries it so the CLI can print exactly what to fix.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

from cli.exit_codes import Exit

FINAL = ("COMPLETED", "CANCELLED")  # a request in one of these states changes no more
RECONNECTS = 6  # attempts to resume a dropped progress stream before giving up


def default_base_url() -> str:
    """IMAGEPIPE_URL, else the local API (`make run`, on IMAGEPIPE_PORT or 8000)."""
    return os.environ.get("IMAGEPIPE_URL") or f"http://127.0.0.1:{os.environ.get('IMAGEPIPE_PORT', '8000')}"


class CliError(Exception):
    """Ends the command with `code`, after printing `message` (and the API's problems, if any)."""

    def __init__(self, code: Exit, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.problems = code, message, problems or []


@dataclass
class Api:
    base_url: str
    api_key: str | None = None
    timeout: float = 30.0
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)

    def page_url(self, request_id: str) -> str:
        return f"{self.base_url}/r/{request_id}"

    @contextmanager
    def call(self) -> Iterator[None]:
        """Network failures as UNAVAILABLE, with the URL tried."""
        try:
            yield
        except httpx.TimeoutException:
            raise CliError(Exit.UNAVAILABLE, f"imagepipe at {self.base_url} did not answer in time") from None
        except httpx.TransportError as exc:
            raise CliError(
                Exit.UNAVAILABLE,
                f"cannot reach imagepipe at {self.base_url} ({exc}); is it running? "
                "Set --url or IMAGEPIPE_URL to another address",
            ) from None

    def checked(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        response.read()
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError):
            body = {"error": response.text[:200] or response.reason_phrase}
        error, problems = body.get("error", ""), body.get("problems", [])
        if response.status_code >= 500:
            raise CliError(
                Exit.UNAVAILABLE, f"imagepipe is unavailable (HTTP {response.status_code}): {error}"
            )
        if response.status_code == 401:
            error += "; set IMAGEPIPE_API_KEY"
        raise CliError(Exit.REFUSED, f"refused (HTTP {response.status_code}): {error}", problems)

    def get_json(self, path: str, **params: Any) -> dict[str, Any]:
        with self.call():
            return self.checked(self.http.get(path, params=params)).json()

    def post_json(self, path: str) -> dict[str, Any]:
        with self.call():
            return self.checked(self.http.post(path)).json()

    def delete_json(self, path: str) -> dict[str, Any]:
        with self.call():
            return self.checked(self.http.delete(path)).json()

    def upload(self, csv_path: str, fields: dict[str, str]) -> dict[str, Any]:
        with self.call(), open(csv_path, "rb") as csv_file:
            files = {"file": (os.path.basename(csv_path), csv_file, "text/csv")}
            return self.checked(self.http.post("/upload", files=files, data=fields)).json()

    def download(self, url: str, write: Callable[[httpx.Response], None]) -> None:
        # Links on another host (a PUBLIC_BASE_URL in front of the API) are public: they get no API key.
        own = not url.startswith(("http://", "https://")) or url.startswith(self.base_url + "/")
        client = self.http if own else httpx.Client(timeout=self.timeout)
        with self.call(), client.stream("GET", url) as response:
            write(self.checked(response))

    def follow(self, request_id: str, on_snapshot: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Follow the request's live progress (Server-Sent Events) until it is final; resumes a dropped
        stream (the server restarted, the network blinked) a few times before giving up."""
        failures = 0
        while True:
            try:
                with self.call():
                    snapshot = self._stream(request_id, on_snapshot)
                if snapshot is not None:
                    return snapshot
            except CliError as exc:
                failures += 1
                if exc.code != Exit.UNAVAILABLE or failures > RECONNECTS:
                    raise
            time.sleep(min(2.0**failures, 10.0))

    def _stream(
        self, request_id: str, on_snapshot: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any] | None:
        # Idle streams carry a ping every 15 s: a minute of silence means the connection is gone.
        timeout = httpx.Timeout(self.timeout, read=60.0)
        with connect_sse(self.http, "GET", f"/status/{request_id}/events", timeout=timeout) as source:
            self.checked(source.response)
            for event in source.iter_sse():
                if event.event == "gone":
                    raise CliError(Exit.REFUSED, json.loads(event.data).get("error", "the request is gone"))
                if event.event == "progress":
                    snapshot: dict[str, Any] = json.loads(event.data)
                    on_snapshot(snapshot)
                    if snapshot["status"] in FINAL:
                        return snapshot
        return None
