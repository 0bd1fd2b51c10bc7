"""`make bench` / `python -m bench [--images N] [--quick] [--profile PY_SPY]`: see bench/__init__.py."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog

from bench import report
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


def main() -> None:
    config = parse(sys.argv[1:])
    configure_logging("bench", "INFO", json=False)
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


if __name__ == "__main__":
    main()
