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


def children() -> dict[int, list[int]]:
    """Every process's direct children (e.g. a compressor's codec pool), from one scan of /proc/*/stat."""
    found: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces; the fields after the last ')' do not.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found.setdefault(parent, []).append(int(entry.name))
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far; 0 when it is gone."""
    try:
        return _stat_cpu((PROC / str(pid) / "stat").read_text())
    except OSError:
        return 0.0


def _stat_cpu(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat(5)


def thread_cpu_seconds(pid: int, name: str) -> float:
    """CPU time of `pid`'s threads named `name` (a compressor's codec threads); 0 if it has none."""
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return 0.0
    total = 0.0
    for task in tasks:
        try:
            if (task / "comm").read_text().strip() == name:
                total += _stat_cpu((task / "stat").read_text())
        except OSError:
            continue
    return total


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


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (all cores), from /proc/stat: shows how
    much of a measurement's CPU went to processes outside the benchmark."""
    try:
        first = (PROC / "stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def listening_pid(port: int) -> int | None:
    """The process listening on TCP `port` (e.g. the RabbitMQ node we use, when several run), or None."""
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (PROC / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:  # gone, or not ours to read
            continue
    return None
