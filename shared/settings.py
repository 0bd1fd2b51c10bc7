"""Every setting of every service, read once from `IMAGEPIPE_*` environment variables."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.webhooks import secret_key

_PLACEHOLDER = re.compile(r"change[-_ ]?me|replace[-_ ]?me", re.IGNORECASE)


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting is often a secret, and the error goes to the log.
    model_config = SettingsConfigDict(env_prefix="IMAGEPIPE_", extra="ignore", hide_input_in_errors=True)

    # --- wiring ---------------------------------------------------------------------------------------
    # The vhost is part of the URL; `bus_prefix` names the exchange and every queue, and `mongo_db` the
    # database, so two deployments (say the test suite and `make run`) on one broker never share messages.
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    bus_prefix: str = "imagepipe"
    mongo_url: str | None = None  # None: `make run` starts SecantusDB under data_dir and sets this
    mongo_db: str = "imagepipe"
    data_dir: Path = Path("./var")

    # --- API ------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = None  # absolute base for links we hand out; default http://host:port
    api_keys: list[SecretStr] = Field(default_factory=list)  # empty: no auth (local mode)
    status_cache_seconds: float = 1.0  # how long one rendering of GET /status serves every poll
    # live progress (GET /status/{id}/events): one rendering per request per interval, shared by its watchers
    events_interval_seconds: float = Field(default=1.0, gt=0)

    # --- upload limits --------------------------------------------------------------------------------
    max_csv_bytes: int = 20 * 1024 * 1024
    max_rows: int = 100_000
    max_urls_per_row: int = 50
    max_images: int = 200_000
    max_url_length: int = 2048
    max_row_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=8 * 1024 * 1024)  # one CSV row, stored

    # --- compression ----------------------------------------------------------------------------------
    quality: int = Field(default=50, ge=1, le=95)
    max_pixels: int = 50_000_000  # decompression-bomb guard, checked from the header
    codec_workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    # The compressor (and its codec processes) yields the CPU to latency-sensitive work on the host.
    compressor_nice: int = Field(default=10, ge=0, le=19)
    max_in_flight: int = 8  # prefetch per compressor process: bounds its memory
    max_frames: int = Field(default=2000, ge=1)  # frames of one animation
    codec_time_budget: float = Field(default=30.0, gt=0)  # seconds one image may take in a codec worker
    # Fairness: at most this many downloads from one origin host per compressor; a breaker per host
    # fails its images fast after this many timeouts or connection failures in a row, for `host_cooldown`.
    host_concurrency: int = Field(default=4, ge=1)
    host_failures_to_open: int = Field(default=5, ge=1)
    host_cooldown: float = Field(default=30.0, gt=0)
    # The outbox meters each request into the queue: at most this many of its images queued or in progress.
    outbox_window: int = Field(default=256, ge=1)

    # --- fetching untrusted URLs ----------------------------------------------------------------------
    fetch_allow_private: bool = False
    fetch_max_bytes: int = 25 * 1024 * 1024
    fetch_max_redirects: int = 5
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 15.0
    fetch_total_timeout: float = 60.0
    fetch_attempts: int = Field(default=3, ge=1)
    fetch_backoff: float = 0.5

    # --- delivery -------------------------------------------------------------------------------------
    retry_delays_ms: list[int] = Field(default_factory=lambda: [1_000, 5_000, 30_000])

    # --- notifications --------------------------------------------------------------------------------
    smtp_host: str | None = None  # None: write .eml files under data_dir/mail
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    mail_from: str = "imagepipe@localhost"
    # Legacy: each upload with a webhook_url gets its own signing secret. This one signs only the webhooks of
    # requests uploaded before that (they have none of their own); unset, those go unsigned.
    webhook_secret: SecretStr | None = None  # Standard Webhooks secret, "whsec_<base64>"
    # The output CSV is attached to the email up to this size; a larger one is linked (GET /output/{id}).
    mail_attach_max_bytes: int = Field(default=5 * 1024 * 1024, ge=0)
    notify_attempts: int = 5
    notify_backoff: float = 1.0
    notify_timeout: float = 10.0
    renotify_interval_seconds: float = (
        60.0  # POST /webhook-completed: at most one re-send per request per interval
    )

    # --- retention ------------------------------------------------------------------------------------
    # Finished requests, with their images, are deleted this long after they finished; 0 keeps them forever.
    retention_days: float = Field(default=30.0, ge=0)

    # --- operations -----------------------------------------------------------------------------------
    health_port: int = 0  # workers' /healthz, /readyz and /metrics; 0 picks a free port
    log_level: str = "INFO"
    log_json: bool = True
    shutdown_grace: float = 20.0
    compressors: int = 2  # how many compressor processes `make run` starts

    @field_validator("api_keys", "webhook_secret", "smtp_password", "amqp_url", "mongo_url")
    @classmethod
    def _no_placeholder(cls, value: object) -> object:
        """A secret copied from an example unchanged (`change-me`) would be accepted as it is: refuse it."""
        for secret in value if isinstance(value, list) else [value]:
            text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if isinstance(text, str) and "://" in text:
                text = urlsplit(text).password or ""  # a URL: only its password is a secret
            if isinstance(text, str) and _PLACEHOLDER.search(text):
                raise ValueError("holds a placeholder from an example (change-me): set a real secret")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _valid_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # set but empty (compose passes an unset optional variable so): none
        secret_key(value.get_secret_value())  # a ValueError naming what is wrong, at startup
        return value

    @property
    def retention(self) -> timedelta | None:
        return timedelta(days=self.retention_days) if self.retention_days else None

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
