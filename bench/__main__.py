"""`make bench` / `python -m bench [--section all|pipeline|options|scaling] [--images N] [--quick]
[--profile PY_SPY]`: see bench/__init__.py. `--section options` runs only the image options section
(bench/options.py), `--section scaling` only the compressor scaling section and the capacity calculation
(bench/scaling.py)."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog

from bench import options, report, scaling
from bench.config import Config, parse
from bench.results import Results, write_json
from bench.run import run
from shared.logging import configure_logging

log = structlog.get_logger()


async def _until_stopped(config: Config) -> Results:
    """SIGTERM stops the run as Ctrl-C does: the run is cancelled and the services it started are stopped."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(config)


SECTIONS = ("all", "pipeline", "options", "scaling")


def _section(argv: list[str]) -> tuple[str, list[str]]:
    """The `--section` asked for (default all), and the other arguments."""
    if "--section" not in argv:
        return "all", argv
    at = argv.index("--section")
    section = argv[at + 1] if at + 1 < len(argv) else ""
    if section not in SECTIONS:
        raise SystemExit(f"--section must be one of {', '.join(SECTIONS)}")
    return section, argv[:at] + argv[at + 2 :]


def main() -> None:
    section, argv = _section(sys.argv[1:])
    configure_logging("bench", "INFO", json=False)
    if section == "options":
        options.main(argv)
        return
    if section == "scaling":
        scaling.main(argv)
        return
    config = parse(argv)
    results = asyncio.run(_until_stopped(config))
    text = report.write(results, config.out_dir)
    write_json(results, config.work_dir / "results.json")
    print(text)
    print()
    for check in results.checks():
        print(f"{'PASS' if check.passed else 'MISS'}  {check.target}: {check.measured}")
    log.info(
        "bench_written",
        report=str(config.out_dir / report.REPORT_NAME),
        plot=str(config.out_dir / report.PLOT_NAME),
        results=str(config.work_dir / "results.json"),
    )
    if section == "all":  # the pipeline wrote the page afresh: add the other sections to it
        options.run(config.quick, config.work_dir, config.out_dir, " ".join(["--section", "options", *argv]))
        scaling.run_and_print(config)


if __name__ == "__main__":
    main()
