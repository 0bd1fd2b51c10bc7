"""Where the CPU goes, from py-spy: attach to running services, then sort their samples into categories.

py-spy is not a project dependency (install it into a separate venv: `python3 -m venv /tmp/pyspyvenv &&
/tmp/pyspyvenv/bin/pip install py-spy`) and is only used with `--profile PATH`. Samples are taken without
pausing the targets (--nonblocking) and only of threads doing work (idle threads are left out), so the
shares below are shares of busy CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger()

# (category, patterns in a frame's file). A sample's category is that of the frame nearest its leaf that
# matches, so `bson` under `services/compressor/handler.py` counts as storage, not as the handler. The
# event loop is the fallback: a socket write under pymongo is storage, one from a bare callback is not.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("codec", ("PIL/", "services/compressor/codec.py")),
    ("process pool IPC", ("concurrent/futures/", "multiprocessing/", "pickle")),
    ("fetch", ("services/compressor/fetch.py", "shared/netguard.py", "aiohttp/")),
    (
        "storage (driver)",
        ("pymongo/", "bson/", "gridfs/", "shared/mongo.py", "shared/repository.py", "shared/files.py"),
    ),
    ("bus", ("aio_pika/", "aiormq/", "pamqp/", "shared/bus.py")),
    ("JSON / validation", ("json/", "pydantic/", "pydantic_core", "shared/events.py")),
    ("HTTP server", ("uvicorn/", "starlette/", "fastapi/", "h11/", "httptools", "multipart/")),
    ("CSV", ("services/upload/csv_input.py", "csv.py")),
    ("database engine", ("secantus/",)),
)
EVENT_LOOP = ("asyncio/", "selectors.py", "uvloop")
# Logging wins wherever it appears in a stack: its JSON rendering is a cost of logging, not of JSON.
LOGGING = ("structlog/", "logging/", "shared/logging.py")
# Leaf frames that are waits, not work: py-spy without pausing its target cannot always tell an idle thread.
IDLE_LEAVES = (
    "select (selectors.py",
    "_recv (multiprocessing/connection.py",
    "_recv_bytes (multiprocessing/connection.py",
    "wait (threading.py",
    "_recv_exactly (secantus/wire.py",
)
FRAME_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)$")


@dataclass
class Profile:
    name: str
    samples: int = 0  # busy samples
    idle: int = 0  # samples whose leaf is a wait (IDLE_LEAVES), left out of every share
    categories: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)  # self samples per function

    def share(self, category: str) -> float:
        return self.categories[category] / self.samples if self.samples else 0.0

    def top_leaves(self, n: int = 8) -> list[tuple[str, float]]:
        return [(leaf, count / self.samples) for leaf, count in self.leaves.most_common(n)]


def _file(frame: str) -> str:
    match = FRAME_FILE.search(frame)
    return match.group(1) if match else frame


def categorise(frames: list[str]) -> str:
    """The category of one stack (root first, as py-spy writes it)."""
    files = [_file(f) for f in frames]
    if any(pattern in f for f in files for pattern in LOGGING):
        return "logging"
    for f in reversed(files):
        for category, patterns in CATEGORIES:
            if any(pattern in f for pattern in patterns):
                return category
    if any(pattern in f for f in files for pattern in EVENT_LOOP):
        return "event loop"
    return "other"


def parse_raw(name: str, text: str) -> list[Profile]:
    """py-spy's raw format: one `frame;frame;...;leaf count` line per distinct stack.

    With --subprocesses each stack starts with one `process <pid>:"<cmd>"` frame per generation; samples
    of child processes (a compressor's codec pool) go to a second profile, `<name> workers`.
    """
    profiles = {name: Profile(name)}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        frames = [f for f in parts if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        owner = f"{name} workers" if sum(f.startswith("process ") for f in parts) > 1 else name
        profile = profiles.setdefault(owner, Profile(owner))
        if any(idle in frames[-1] for idle in IDLE_LEAVES):
            profile.idle += count
            continue
        profile.samples += count
        profile.categories[categorise(frames)] += count
        profile.leaves[frames[-1]] += count
    return list(profiles.values())


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


@dataclass
class Session:
    out_dir: Path
    profiles: list[Profile] = field(default_factory=list)


@contextlib.asynccontextmanager
async def profiling(py_spy: Path, targets: dict[str, int], out_dir: Path, tag: str) -> AsyncIterator[Session]:
    """Record each target (name -> pid, children included) for the duration of the block."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    session = Session(out_dir)
    recorders = {}
    for name, pid in targets.items():
        output = out_dir / f"{tag}-{name}.txt"
        recorders[name] = (
            await asyncio.create_subprocess_exec(
                str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                "--format", "raw", "--output", str(output),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            ),
            output,
        )  # fmt: skip
    await asyncio.sleep(1.0)  # let py-spy attach before the work starts
    try:
        yield session
    finally:
        for name, (proc, output) in recorders.items():
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            _, stderr = await proc.communicate()
            text = await asyncio.to_thread(_read, output)
            if text is not None:
                session.profiles += parse_raw(name, text)
            else:
                log.warning("py_spy_failed", target=name, stderr=stderr.decode()[-500:])
