"""The links imagepipe hands out (in API answers, output CSVs, emails and webhooks), built in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Links:
    base_url: str  # absolute, without a trailing slash (Settings.base_url)

    def status(self, request_id: str) -> str:
        return f"{self.base_url}/status/{request_id}"

    def output(self, request_id: str) -> str:
        return f"{self.base_url}/output/{request_id}"

    def image(self, file_id: str) -> str:
        return f"{self.base_url}/image/{file_id}"
