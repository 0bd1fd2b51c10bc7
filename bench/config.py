"""The benchmark's options: the command line, and what `--quick` shrinks for the CI smoke test."""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.corpus import QUICK_SPEC, CorpusSpec
from shared.settings import get_settings


@dataclass(frozen=True)
class Config:
    images: int  # the main batch, and the codec ceiling's sample
    scaling_images: int  # each batch of the scaling series (and the status-load batch's minimum)
    scaling: tuple[int, ...]  # compressor process counts
    large_rows: int
    page_images: int  # the request whose default status page is weighed
    status_rps: float
    status_seconds: float
    corpus: CorpusSpec
    work_dir: Path  # corpus cache, run data (database, logs, profiles) and results.json
    out_dir: Path  # benchmarks.md and throughput.png
    profile: Path | None  # py-spy executable
    quick: bool
    argv: str

    @property
    def corpus_dir(self) -> Path:
        return self.work_dir / ("corpus-quick" if self.quick else "corpus")


def default_scaling() -> tuple[int, ...]:
    cores = os.cpu_count() or 1
    # 1, make run's default, one per core, and oversubscribed: where adding processes stops paying.
    return tuple(sorted({1, get_settings().compressors, cores, 2 * cores}))


def parse(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Pipeline throughput vs codec ceiling."
    )
    parser.add_argument("--images", type=int, help="main batch size (default 2000; quick 40)")
    parser.add_argument("--scaling-images", type=int, help="batch size per scaling point (default 600)")
    parser.add_argument("--scaling", help="compressor counts, comma-separated (default 1,N,cores,2*cores)")
    parser.add_argument("--large-rows", type=int, help="rows of the large upload (default 100000)")
    parser.add_argument("--status-rps", type=float, default=200.0, help="status read rate (default 200)")
    parser.add_argument("--status-seconds", type=float, help="status load duration (default 10)")
    parser.add_argument("--work", type=Path, help="corpus cache and run data (default var/bench)")
    parser.add_argument("--out", type=Path, help="where the report goes (default docs/)")
    parser.add_argument(
        "--profile", type=Path, metavar="PY_SPY", help="py-spy executable: add profile passes"
    )
    parser.add_argument("--quick", action="store_true", help="tiny everything, report to a temp dir (CI)")
    args = parser.parse_args(argv)

    quick = args.quick
    needs_temp = quick and (args.work is None or args.out is None)
    temp = Path(tempfile.mkdtemp(prefix="imagepipe-bench-")) if needs_temp else None
    scaling = tuple(int(n) for n in args.scaling.split(",")) if args.scaling else None
    return Config(
        images=args.images or (40 if quick else 2000),
        scaling_images=args.scaling_images or (20 if quick else 600),
        scaling=scaling or ((1,) if quick else default_scaling()),
        large_rows=args.large_rows or (2_000 if quick else 100_000),
        page_images=1_000 if quick else 10_000,
        status_rps=args.status_rps,
        status_seconds=args.status_seconds or (2.0 if quick else 10.0),
        corpus=QUICK_SPEC if quick else CorpusSpec(),
        work_dir=(args.work or temp or Path(get_settings().data_dir) / "bench").resolve(),
        out_dir=(args.out or (temp / "report" if temp else Path("docs"))).resolve(),
        profile=args.profile,
        quick=quick,
        argv=" ".join(argv),
    )
