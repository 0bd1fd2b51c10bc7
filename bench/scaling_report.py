"""The scaling section of docs/benchmarks.md, and the capacity calculation for a 1,000,000-image import,
both from one run of bench/scaling.py (nothing in it is typed by hand)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from bench.report import REPORT_NAME, _table, put_section
from bench.scaling import REPLICAS, TARGET_RATIO, ScalingResults
from shared.events import ImageCompressed, ImageRequested
from shared.files import output_file_id
from shared.image_options import ImageOptions

START = "<!-- section: scaling (python -m bench --section scaling) -->"
END = "<!-- end of section: scaling -->"
IMPORT = 1_000_000
TARGET_HOURS = (1.0, 4.0, 12.0)
POD_CORES = 2  # deploy/k8s/base/compressor.yaml: a pod's CPU limit, and its codec workers
MAX_PODS = 20  # deploy/k8s/base/compressor-autoscaling.yaml: maxReplicaCount
HEADROOM = 0.8  # of a pod's measured rate planned with (stalled downloads, throttling), as docs/deploy.md
GRIDFS_CHUNK = 255 * 1024
# How the processes' CPU is grouped in the calculation: the first prefix a process name starts with.
PARTS = {
    "compressors (codec workers included)": ("compressor",),
    "status": ("status",),
    "gateway and relay": ("upload",),
    "notifier": ("notifier",),
    "database (SecantusDB)": ("secantusdb",),
    "broker (RabbitMQ)": ("rabbitmq",),
}


def _part_costs(costs: dict[str, float]) -> dict[str, float]:
    """CPU-ms per image of each part of PARTS."""
    return {
        part: sum(ms for name, ms in costs.items() if name.startswith(prefixes))
        for part, prefixes in PARTS.items()
    }


def _compressor_ms(cpu: dict[str, float]) -> float:
    """CPU-ms of the compressors, codec workers included, in a process -> CPU seconds map."""
    return sum(seconds for name, seconds in cpu.items() if name.startswith("compressor")) * 1000


def _cores(parts: dict[str, float], rate: float) -> str:
    """The cores each part needs at `rate` images/s, from its CPU-ms per image."""
    return ", ".join(f"{part} {rate * ms / 1000:.1f}" for part, ms in parts.items() if ms * rate >= 50)


def _message_bytes() -> tuple[int, int]:
    """The size of a typical ImageRequested and ImageCompressed, as published."""
    url = "https://cdn.example.com/catalogue/products/0123456/main-image-01.jpg"
    options = ImageOptions()
    requested = ImageRequested(
        request_id="r" * 22, index=123456, url=url, file_id=output_file_id("r" * 22, 123456, options)
    )
    compressed = ImageCompressed(
        request_id="r" * 22,
        index=123456,
        url=url,
        file_id=requested.file_id,
        content_type="image/jpeg",
        input_bytes=344_000,
        output_bytes=34_000,
        width=1800,
        height=1200,
        quality=50,
    )
    return len(requested.model_dump_json()), len(compressed.model_dump_json())


def render(r: ScalingResults) -> list[str]:
    one, two = (r.point(n) for n in REPLICAS)
    verdict = "PASS" if r.ratio >= TARGET_RATIO else "**MISS**"
    rest = (
        f"pinned to core(s) {', '.join(map(str, r.rest_cores))}"
        if r.rest_cores
        else "confined with the compressors: this machine has no core to spare beyond theirs, so each point "
        "pinned the database, the broker, the gateway and the origin to its compressors' cores (the whole "
        "system on 1 core, then on 2; on a machine with 3 or more cores they get cores of their own)"
    )
    rows = [
        [
            str(p.compressors),
            ", ".join(map(str, p.cores)),
            f"{p.images:,}",
            f"{p.seconds:.1f} s",
            f"{p.images_per_s:.1f}",
            f"{_compressor_ms(p.cpu) / p.images:.1f}",
            f"{p.outside_share:.0%}",
        ]
        for p in r.points
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        START,
        "## Scaling with compressor replicas (pinned to cores)",
        "",
        f"`{' '.join(['python -m bench --section scaling', r.argv]).strip()}`, {when}, on {len(r.cores)} "
        "cores. Each compressor replica runs one codec worker and is pinned, with its codec process, to a "
        "core of its own (`os.sched_setaffinity` on every thread). The status service is stopped during "
        "these points, so the time is the compressors' alone: from the upload until the last outcome is in "
        f"the status queue. Everything else was {rest}.",
        "",
        *_table(
            ["Replicas", "Cores", "Images", "Time", "Images/s", "Compressor CPU-ms / image", "Other load"],
            rows,
        ),
        "Other load: the share of the machine that processes outside the system used during the point (other "
        "users of a shared machine). Above a few percent the images/s and the ratio are pessimistic; the "
        "CPU-ms per image are not.",
        "",
        f"- **Ratio**: {two.images_per_s:.1f} / {one.images_per_s:.1f} images/s = **{r.ratio:.2f}x** "
        f"(goal: {TARGET_RATIO}x or more) {verdict}.",
        "",
        *_capacity(r),
        END,
    ]


def _capacity(r: ScalingResults) -> list[str]:
    one = r.point(1)
    # CPU time, not wall time: it holds on a busy machine too. One replica's core does this many images/s.
    per_core = 1000 * one.images / _compressor_ms(one.cpu)
    pod_rate = POD_CORES * per_core * HEADROOM
    parts = _part_costs(r.costs)
    others = {part: ms for part, ms in parts.items() if not part.startswith("compressors")}
    requested, compressed = _message_bytes()
    chunks = max(1, math.ceil(r.bytes_out_per_image / GRIDFS_CHUNK))
    rows = []
    for hours in TARGET_HOURS:
        rate = IMPORT / (hours * 3600)
        pods = math.ceil(rate / pod_rate)
        extra = {part: rate * ms / 1000 for part, ms in others.items()}
        rows.append(
            [
                f"{hours:g} h",
                f"{rate:,.0f}",
                f"{pods} ({pods * POD_CORES} cores)",
                *(f"{extra[part]:.1f}" for part in others),
                f"{pods * POD_CORES + sum(extra.values()):.0f}",
            ]
        )
    header = ["Import in", "Images/s", "Compressor pods", *(f"{p} cores" for p in others), "Total cores"]
    return [
        f"### What a {IMPORT:,}-image import needs",
        "",
        f"From this run's measured costs: one compressor replica spends {_compressor_ms(one.cpu) / one.images:.1f} "
        f"CPU-ms per image (its codec worker's included), so a core does **{per_core:.0f} images/s**; with "
        f"replicas scaling linearly (the ratio above; below {TARGET_RATIO}x, plan with it instead) and "
        f"{1 - HEADROOM:.0%} headroom, a {POD_CORES}-core pod (`IMAGEPIPE_CODEC_WORKERS={POD_CORES}`) does "
        f"**{pod_rate:.0f} images/s**. The rest of the "
        f"system's CPU per image, from a batch of {r.cost_batch['images']:,.0f} images through the whole "
        "system (its processes' CPU time from /proc), in CPU-ms:",
        "",
        *_table(["Part", "CPU-ms / image"], [[p, f"{ms:.2f}"] for p, ms in parts.items()]),
        *_table(header, rows),
        f"- **Time on a fixed fleet**: with the production maximum of {MAX_PODS} pods ({MAX_PODS * pod_rate:,.0f} "
        f"images/s), {IMPORT:,} images take {IMPORT / (MAX_PODS * pod_rate) / 60:.0f} minutes, if the rest "
        f"keeps up: at that rate it needs {_cores(others, MAX_PODS * pod_rate)} cores. The database is the "
        "first to run out: one primary takes every write, so past its cores more pods only queue work.",
        f"- **Broker**: two messages per image ({requested} B `ImageRequested`, {compressed} B "
        f"`ImageCompressed`, JSON), each published with a confirm, delivered and acknowledged: "
        f"{2 * IMPORT:,} messages in all, {2 * IMPORT / 3600:,.0f} per second for a 1-hour import. The queue "
        "stays short: the relay meters each request to `IMAGEPIPE_OUTBOX_WINDOW` (256) images in flight, so "
        "the broker holds a few hundred messages per importing request, never the million.",
        f"- **Database**: per image one GridFS file ({r.bytes_out_per_image / 1000:.0f} KB out on average: 1 "
        f"`fs.files` + {chunks} `fs.chunks` document(s)), one outcome document and its share of a batched "
        f"counter update (a transaction). {IMPORT:,} images store {IMPORT * r.bytes_out_per_image / 1e9:.0f} GB "
        f"of images (from {IMPORT * r.bytes_in_per_image / 1e9:.0f} GB fetched); a 1-hour import writes "
        f"{IMPORT / 3600 * (chunks + 2):,.0f} documents/s and {IMPORT / 3600 * r.bytes_out_per_image / 1e6:.0f} "
        "MB/s. The CPU above is SecantusDB's; a MongoDB replica set does this with less CPU, and the writes "
        "are replicated to its two secondaries.",
        "",
    ]


def write(results: ScalingResults, out_dir: Path) -> Path:
    return put_section(out_dir / REPORT_NAME, START, END, "\n".join(render(results)))
