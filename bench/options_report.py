"""The image options section of docs/benchmarks.md: rendered from OptionsResults, written in place."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path

from bench.options import AVIF_COST_BOUND, BASE_QUALITY, Mode, OptionsResults
from bench.report import put_section
from bench.results import Check
from services.compressor import perceptual
from services.compressor.encoding import AVIF_SPEED
from shared.image_options import DEFAULT_TARGET

REPORT_NAME = "benchmarks.md"
START = "<!-- section: image options (python -m bench --section options) -->"
END = "<!-- end of section: image options -->"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _qualities(mode: Mode) -> str:
    chosen = sorted(q for q in mode.qualities if q is not None)
    if not chosen:
        return "-"
    if chosen[0] == chosen[-1]:
        return str(chosen[0])
    return f"{chosen[0]}-{int(statistics.median(chosen))}-{chosen[-1]}"


def within_budget(mode: Mode, base: Mode) -> bool:
    return mode.total_bytes <= base.total_bytes and mode.worst >= base.worst


def calibrated_target(results: OptionsResults) -> float | None:
    """The highest target of this run whose bytes stay within quality 50's and whose worst is no worse."""
    base = results.modes["default"]
    fitting = [float(t) for t, mode in results.calibration.items() if within_budget(mode, base)]
    return max(fitting) if fitting else None


def checks(results: OptionsResults) -> list[Check]:
    base, auto, avif = (results.modes[name] for name in ("default", "auto", "avif"))
    avif_cost = avif.mean_cpu_ms / base.mean_cpu_ms
    return [
        Check(
            f"auto (target {DEFAULT_TARGET:g}) spends no more bytes than quality {BASE_QUALITY}",
            f"{auto.total_bytes:,} vs {base.total_bytes:,} bytes ({auto.total_bytes / base.total_bytes:.1%})",
            auto.total_bytes <= base.total_bytes,
        ),
        Check(
            f"auto's worst image scores no worse than quality {BASE_QUALITY}'s worst",
            f"{auto.worst:.1f} vs {base.worst:.1f}",
            auto.worst >= base.worst,
        ),
        Check(
            f"AVIF (speed {AVIF_SPEED}) CPU per image <= {AVIF_COST_BOUND:g}x JPEG's",
            f"{avif.mean_cpu_ms:.1f} vs {base.mean_cpu_ms:.1f} ms = {avif_cost:.1f}x",
            avif_cost <= AVIF_COST_BOUND,
        ),
    ]


def _mode_rows(results: OptionsResults) -> list[list[str]]:
    base = results.modes["default"]
    rows = []
    for name, mode in results.modes.items():
        count = len(mode.bytes)
        rows.append(
            [
                f"`{name}`",
                f"{mode.total_bytes / count / 1000:,.1f} KB",
                f"{mode.total_bytes / base.total_bytes:.0%}",
                f"{mode.mean_cpu_ms:.1f}",
                f"{mode.mean_cpu_ms / base.mean_cpu_ms:.1f}x",
                f"{mode.mean:.1f}",
                f"{mode.worst:.1f}",
                f"{mode.spread:.1f}",
                _qualities(mode),
            ]
        )
    return rows


def _calibration_rows(results: OptionsResults, chosen: float | None) -> list[list[str]]:
    base = results.modes["default"]
    rows = [
        [
            f"fixed quality {BASE_QUALITY}",
            f"{base.total_bytes:,}",
            "100%",
            f"{base.mean:.1f}",
            f"{base.worst:.1f}",
            f"{base.spread:.1f}",
            "",
        ]
    ]
    for target, mode in results.calibration.items():
        notes = ["fits" if within_budget(mode, base) else "over"]
        if chosen is not None and float(target) == chosen:
            notes.append("**calibrated**")
        if float(target) == DEFAULT_TARGET:
            notes.append("default")
        rows.append(
            [
                f"auto, target {target}",
                f"{mode.total_bytes:,}",
                f"{mode.total_bytes / base.total_bytes:.1%}",
                f"{mode.mean:.1f}",
                f"{mode.worst:.1f}",
                f"{mode.spread:.1f}",
                ", ".join(notes),
            ]
        )
    return rows


def _prediction(results: OptionsResults) -> str:
    pairs = [
        (estimate, score)
        for mode in results.calibration.values()
        for estimate, score in zip(mode.estimates, mode.scores, strict=True)
        if estimate is not None
    ]
    if not pairs:
        return "no estimates"
    errors = [estimate - score for estimate, score in pairs]
    return (
        f"the sample's score minus the full image's: mean {statistics.mean(errors):+.1f}, "
        f"largest {max(errors, key=abs):+.1f} points over {len(pairs)} outputs"
    )


def render(results: OptionsResults) -> list[str]:
    corpus = results.corpus
    pixels = [int(c["width"]) * int(c["height"]) for c in corpus]  # type: ignore[call-overload]
    kinds = sorted({str(c["kind"]) for c in corpus})
    base, auto = results.modes["default"], results.modes["auto"]
    chosen = calibrated_target(results)
    search = results.search
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    check_rows = [[c.target, c.measured, "PASS" if c.passed else "**MISS**"] for c in checks(results)]
    return [
        START,
        "## Image options (codec only)",
        "",
        f"`python -m bench {results.argv}` on {when}, one process, no services. Corpus: {len(corpus)} "
        f"photo-like JPEGs made by code (`tests/images.py`: {', '.join(kinds)}; quality 92) of "
        f"{min(pixels) / 1e6:.2f}-{max(pixels) / 1e6:.2f} MP. Scores are SSIMULACRA2 of each output "
        "against its source at full size (for `max_width=800`, against the source resized with Lanczos "
        "from a full decode). CPU time is `compress()` in this process: decode, resize, search, encode.",
        "",
        *_table(["Target", "Measured", ""], check_rows),
        *_table(
            [
                "Mode",
                "Bytes / image",
                "of default",
                "CPU-ms / image",
                "of default",
                "Mean score",
                "Worst score",
                "Score sd",
                "Quality (min-median-max)",
            ],
            _mode_rows(results),
        ),
        f"### `quality=auto`: calibration against fixed quality {BASE_QUALITY}",
        "",
        f"The default target is the highest that spends no more bytes in total than quality {BASE_QUALITY} "
        f"while its worst image scores no worse than quality {BASE_QUALITY}'s worst. This run's "
        f"calibration: **{chosen:g}**; the built-in default is **{DEFAULT_TARGET:g}**."
        if chosen is not None
        else f"No target of this run fits the budget; the built-in default is {DEFAULT_TARGET:g}.",
        "",
        *_table(
            ["Setting", "Total bytes", "of q50", "Mean score", "Worst score", "Score sd", ""],
            _calibration_rows(results, chosen),
        ),
        f"- **Cost of auto**: {auto.mean_cpu_ms:.0f} CPU-ms per image, {auto.mean_cpu_ms / base.mean_cpu_ms:.0f}x "
        f"a fixed quality's {base.mean_cpu_ms:.1f}. The search alone: {search['probes']:.1f} probes per image "
        f"(at most {search['max_probes']:.0f}), {search['cpu_ms']:.0f} CPU-ms; each probe encodes, decodes "
        f"and scores a sample of at most {perceptual.GRID_TILES + perceptual.BUSY_TILES} aligned 96-px tiles "
        "(images up to ~0.28 MP whole).",
        f"- **Sample vs full size**: {_prediction(results)}. The search stops at the first quality whose "
        "sample meets the target, so the full image tends to score a little lower; the calibration above "
        "is on full-size scores, so it accounts for that.",
        "",
        END,
    ]


def write(results: OptionsResults, out_dir: Path) -> Path:
    """Put the section into `out_dir`/benchmarks.md: in place of its previous run, or at the end."""
    return put_section(out_dir / REPORT_NAME, START, END, "\n".join(render(results)))
