"""Process memory from /proc (psutil is not a dependency): resident set now and its high-water mark."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes resident now (VmRSS)
    hwm: int  # peak resident bytes since the process started (VmHWM)


def memory(pid: int) -> Memory | None:
    """None when the process is gone (or not ours to read)."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return Memory(rss=_kib(fields.get("VmRSS")), hwm=_kib(fields.get("VmHWM")))


def _kib(value: str | None) -> int:
    return int(value.split()[0]) * 1024 if value else 0  # "123456 kB"


def children(pid: int) -> list[int]:
    """Direct children of `pid` (e.g. a compressor's codec pool), found by scanning /proc/*/stat."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces; the fields after the last ')' do not.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far; 0 when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat(5)


def find_pids(command: str) -> list[int]:
    """Processes whose command name is `command` (e.g. RabbitMQ's "beam.smp"), to read their CPU time."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
