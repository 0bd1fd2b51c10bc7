"""`make bench` in miniature: the benchmark runs end to end and reports every figure (no timing asserts)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from shared.image_options import DEFAULT_TARGET
from tests.conftest import AMQP_URL

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("upload", "status", "notifier", "compressor-1", "compressor-2")


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_benchmark_reports_every_figure(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPIPE_")}
    env["IMAGEPIPE_AMQP_URL"] = AMQP_URL
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--work", str(work), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    assert (out / "throughput.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    report = (out / "benchmarks.md").read_text()
    for heading in (
        "## Machine",
        "## Targets",
        "## Throughput",
        "## Memory",
        "## Status reads",
        "## Large upload",
        "## Image options (codec only)",  # make bench runs every section
        "## Scaling with compressor replicas (pinned to cores)",
    ):
        assert heading in report
    results = json.loads((work / "results.json").read_text())

    # 1. the ceiling, and the main batch against it
    ceiling = results["ceiling"]
    assert positive(ceiling["images_per_s"]) and positive(ceiling["cpu_images_per_s"])
    assert positive(results["share_of_ceiling"]) and positive(results["cpu_bound_share"])
    main = results["main"]
    assert main["images"] == 40 and main["compressed"] == 40 and main["failed"] == 0
    for figure in ("images_per_s", "latency_p50", "latency_p99", "upload_seconds", "bytes_in", "bytes_out"):
        assert positive(main[figure]), figure
    assert main["bytes_out"] < main["bytes_in"]
    # peak RSS of every service; the codec runs on threads of each compressor (CODEC_ISOLATION=thread),
    # and their CPU is counted apart from the rest of the compressor's
    for name in (*SERVICES, "secantusdb"):
        assert positive(main["memory"][name]["main"]["hwm"]), name
    assert all(f"compressor-{n} codec threads" in main["cpu"] for n in (1, 2))
    assert set(main["compressor_rss"]) == {"compressor-1", "compressor-2"}
    assert positive(sum(main["cpu"].values()))
    # 2. scaling: one compressor
    assert [b["compressors"] for b in results["scaling"]] == [1]
    assert positive(results["scaling"][0]["images_per_s"])
    # 3. status reads under load, and page sizes
    load = results["status"]["load"]
    assert load["errors"] == 0 and len(load["latencies"]) == 400  # 200 rps for 2 s
    assert positive(results["status"]["p99"])
    capacity = results["status_capacity"]
    assert capacity["errors"] == 0 and positive(capacity["rate"]) and capacity["clients"] > 0
    assert positive(results["page"]["pending"]["bytes"]) and positive(results["main_page"]["bytes"])
    assert results["main_page"]["products"] == 10  # all of the main batch's 40 images, 4 per product
    # 4. the large upload: accepted, measured, queued
    large = results["large"]
    assert large["rows"] == 2000
    for figure in ("seconds_to_202", "hwm_accepted", "hwm_published", "messages_per_s", "db_publish_seconds"):
        assert positive(large[figure]), figure
    # 5. every target judged, and printed
    assert len(results["checks"]) == 6
    for check in results["checks"]:
        assert (
            check["measured"] and f"{'PASS' if check['passed'] else 'MISS'}  {check['target']}" in done.stdout
        )


def test_the_image_options_section_runs_alone_and_reports_every_mode(tmp_path: Path) -> None:
    """`python -m bench --section options --quick`: codec only, into an existing report, in place."""
    work, out = tmp_path / "work", tmp_path / "report"
    out.mkdir()
    (out / "benchmarks.md").write_text("# Benchmarks\n\n## Throughput\n\nfrom the pipeline\n")
    command = [
        sys.executable,
        "-m",
        "bench",
        "--section",
        "options",
        "--quick",
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    for _ in range(2):  # the second run replaces the first's section
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "benchmarks.md").read_text()
    assert report.count("## Image options (codec only)") == 1 and "from the pipeline" in report
    assert "calibration against fixed quality 50" in report

    results = json.loads((work / "options.json").read_text())
    images = len(results["corpus"])
    assert images == 5 and {c["kind"] for c in results["corpus"]} == {
        "smooth",
        "noisy",
        "detailed",
        "product",
        "mixed",
    }
    assert list(results["modes"]) == ["default", "max_width=800", "webp", "avif", "auto"]
    for name, mode in results["modes"].items():
        assert len(mode["bytes"]) == len(mode["cpu_ms"]) == len(mode["scores"]) == images, name
        assert positive(mode["total_bytes"]) and positive(mode["mean_cpu_ms"]), name
        assert all(-100 < s <= 100 for s in mode["scores"]) and mode["worst"] <= mode["mean"], name
    assert all(e is not None for e in results["modes"]["auto"]["estimates"])  # auto's own scores
    assert results["calibration"] and positive(results["search"]["probes"])
    assert [c["target"] for c in results["checks"]][:2] == [
        f"auto (target {DEFAULT_TARGET:g}) spends no more bytes than quality 50",
        "auto's worst image scores no worse than quality 50's worst",
    ]


def test_the_scaling_section_pins_replicas_and_reports_the_ratio_and_capacity(tmp_path: Path) -> None:
    """`python -m bench --section scaling --quick`: 1 then 2 pinned compressors, into an existing report."""
    work, out = tmp_path / "work", tmp_path / "report"
    out.mkdir()
    (out / "benchmarks.md").write_text("# Benchmarks\n\n## Throughput\n\nfrom the pipeline\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPIPE_")}
    env["IMAGEPIPE_AMQP_URL"] = AMQP_URL
    command = [
        sys.executable,
        "-m",
        "bench",
        "--section",
        "scaling",
        "--quick",
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "benchmarks.md").read_text()
    assert "from the pipeline" in report and report.count("## Scaling with compressor replicas") == 1
    assert "### What a 1,000,000-image import needs" in report

    results = json.loads((work / "scaling.json").read_text())
    cores = results["cores"]
    assert [(p["compressors"], p["cores"]) for p in results["points"]] == [(1, cores[:1]), (2, cores[:2])]
    assert all(p["images"] == 20 and positive(p["images_per_s"]) for p in results["points"])
    assert positive(results["ratio"]) and f"{results['ratio']:.2f}x" in done.stdout
    assert results["rest_cores"] == (cores[2:] or None)
    for part in ("compressor-1", "secantusdb", "status", "upload"):
        assert positive(results["costs"][part]), part
    assert positive(results["bytes_out_per_image"])


def test_pinning_reaches_every_thread_and_child_and_is_undone() -> None:
    from bench.scaling import pin, unpin

    cores = sorted(os.sched_getaffinity(0))
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2:  # until its second thread is running
            assert time.monotonic() < deadline, "the child never started its thread"
            time.sleep(0.05)
        before = pin(os.getpid(), {cores[0]})  # this process, its threads, and the child
        threads = os.listdir(f"/proc/{child.pid}/task")
        assert len(threads) == 2 and len(before) >= 3
        assert all(os.sched_getaffinity(int(t)) == {cores[0]} for t in threads)
        unpin(before)
        assert os.sched_getaffinity(0) == set(cores)
        assert all(os.sched_getaffinity(int(t)) == set(cores) for t in threads)
    finally:
        child.kill()
        child.wait()


def test_profile_samples_are_sorted_into_categories() -> None:
    """py-spy's raw output (root first, count last) becomes shares of busy samples; waits are left out."""
    from bench.profile import parse_raw

    raw = "\n".join(
        [
            'process 1:"python -m services.compressor";<module> (services/compressor/__main__.py:30);'
            "handle (services/compressor/handler.py:90);put (shared/files.py:120);"
            "insert_many (pymongo/asynchronous/collection.py:900) 3",
            'process 1:"python -m services.compressor";process 2:"python -c spawn_main()";'
            "_worker (concurrent/futures/process.py:250);compress (services/compressor/codec.py:120);"
            "load (PIL/ImageFile.py:412) 6",
            "<module> (services/compressor/__main__.py:30);info (structlog/_native.py:10);"
            "dumps (json/__init__.py:231) 1",
            "<module> (services/compressor/__main__.py:30);run_forever (asyncio/base_events.py:607);"
            "select (selectors.py:468) 50",
            "not a stack line",
        ]
    )
    main, workers = parse_raw("compressor", raw)
    assert (main.name, main.samples, main.idle) == ("compressor", 4, 50)
    assert main.share("storage (driver)") == 0.75
    assert main.share("logging") == 0.25  # JSON rendered by the logger is a cost of logging
    assert (workers.name, workers.samples, workers.share("codec")) == ("compressor workers", 6, 1.0)
    assert workers.top_leaves(1) == [("load (PIL/ImageFile.py:412)", 1.0)]
