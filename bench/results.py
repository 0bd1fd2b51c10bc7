"""Everything one run measured, and the targets it is judged against."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from bench.ceiling import Ceiling
from bench.pipeline import BatchResult, LargeUpload, PageSize, StatusLoad, StatusPage
from bench.profile import Profile
from bench.statusload import LoadResult

MB = 1_000_000

# The targets, as the lead set them.
THROUGHPUT_SHARE = 0.70  # of the codec ceiling
LARGE_UPLOAD_SECONDS = 3.0
LARGE_UPLOAD_RSS = 250 * MB
QUEUEING_RATE = 5_000.0  # messages/s
STATUS_P99 = 0.020  # s, at the configured rate
RSS_GROWTH = 1.10  # a compressor's RSS in a batch's second half may exceed its first half's by 10% at most


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    passed: bool


@dataclass
class Results:
    options: dict[str, Any]
    machine: dict[str, Any]
    corpus: dict[str, Any]
    ceiling: Ceiling
    main: BatchResult
    main_page: StatusPage  # the default page of the completed main batch
    status: StatusLoad
    status_capacity: LoadResult  # closed loop, nothing else running
    scaling: list[BatchResult]
    page: PageSize
    large: LargeUpload
    restarts: int  # services the supervisor had to restart
    broker_reconnects: int = 0  # the broker went away (a restart) while we measured
    profiles: dict[str, list[Profile]] = field(default_factory=dict)  # pass -> per-process profiles
    profile_error: str | None = None

    @property
    def share_of_ceiling(self) -> float:
        return self.main.images_per_s / self.ceiling.images_per_s

    @property
    def cpu_bound_share(self) -> float:
        """The share of the ceiling the pipeline would reach CPU-bound on an otherwise idle machine: codec
        CPU per image over the system's CPU per image. Other load on the machine does not move it."""
        return self.ceiling.cpu_ms_per_image / self.main.cpu_ms_per_image

    def checks(self) -> list[Check]:
        large, status = self.large, self.status
        rate = f"{status.load.rate:.0f} rps"
        # A batch too short to sample both halves says nothing about growth: that is a MISS, not a PASS.
        growth = {
            name: second / first if first and second else math.inf
            for name, (first, second) in self.main.compressor_rss.items()
        }
        return [
            Check(
                f"throughput >= {THROUGHPUT_SHARE:.0%} of the codec ceiling",
                f"{self.main.images_per_s:.1f} of {self.ceiling.images_per_s:.1f} images/s "
                f"= {self.share_of_ceiling:.0%}",
                self.share_of_ceiling >= THROUGHPUT_SHARE,
            ),
            Check(
                f"{large.rows:,}-row upload accepted in < {LARGE_UPLOAD_SECONDS:.0f} s",
                f"{large.seconds_to_202:.2f} s",
                large.seconds_to_202 < LARGE_UPLOAD_SECONDS,
            ),
            Check(
                f"... with upload service peak RSS < {LARGE_UPLOAD_RSS / MB:.0f} MB",
                f"{large.hwm_accepted / MB:.0f} MB",
                large.hwm_accepted < LARGE_UPLOAD_RSS,
            ),
            Check(
                f"queueing >= {QUEUEING_RATE:,.0f} messages/s",
                f"{large.messages_per_s:,.0f} messages/s",
                large.messages_per_s >= QUEUEING_RATE,
            ),
            Check(
                f"GET /status p99 < {STATUS_P99 * 1000:.0f} ms at {rate}",
                f"p99 {status.p99 * 1000:.1f} ms ({status.load.errors} errors)",
                status.p99 < STATUS_P99 and status.load.errors == 0,
            ),
            Check(
                "compressor RSS bounded (2nd half of the batch <= 1st half + 10%)",
                ", ".join(f"{name} x{g:.2f}" for name, g in sorted(growth.items())),
                bool(growth) and all(g <= RSS_GROWTH for g in growth.values()),
            ),
        ]


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        plain = {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
        for name in dir(type(value)):  # derived figures (properties) too, for readers of the JSON
            if isinstance(getattr(type(value), name), property):
                plain[name] = _plain(getattr(value, name))
        return plain
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(results: Results, path: Path) -> None:
    document = _plain(results)
    document["checks"] = [asdict(c) for c in results.checks()]
    path.write_text(json.dumps(document, indent=2, default=str))
