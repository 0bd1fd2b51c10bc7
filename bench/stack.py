"""The whole system, started as `make run` starts it, but isolated: its own database (SecantusDB under the
run folder, or a fresh database on IMAGEPIPE_MONGO_URL), its own bus prefix, its own API port and image
origin, and mail written to files. Process management is localrun's Supervisor, the same code `make run`
uses."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import structlog

from bench.broker import Broker
from bench.procstat import (
    Memory,
    children,
    cpu_seconds,
    find_pids,
    listening_pid,
    memory,
    thread_cpu_seconds,
)
from localrun.broker import ensure_rabbitmq
from localrun.supervisor import Supervisor, child_env, free_port, secantus_argv, secantus_url, wait_for_port
from shared.bus import Topology
from shared.mongo import Mongo, connect_mongo
from shared.settings import Settings, get_settings

log = structlog.get_logger()
T = TypeVar("T")

RABBITMQ_PROCESS = "beam.smp"
CODEC_THREAD = "codec"  # what services/compressor/codec_pool.py names its codec threads


@dataclass(frozen=True)
class ProcessMemory:
    main: Memory
    workers: list[Memory]  # child processes, e.g. a compressor's codec pool

    @property
    def workers_hwm(self) -> int:
        return sum(w.hwm for w in self.workers)


def _broker_pid(amqp_url: str) -> int | None:
    """The local RabbitMQ node behind `amqp_url`, to count its CPU time; None if it is not local or
    cannot be told apart from other nodes."""
    parts = urlsplit(amqp_url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    if pid := listening_pid(parts.port or 5672):
        return pid
    nodes = find_pids(RABBITMQ_PROCESS)  # its sockets are not ours to read: fall back on the name
    return nodes[0] if len(nodes) == 1 else None


@dataclass
class BenchStack:
    settings: Settings  # what the services run with, as this process sees it
    supervisor: Supervisor
    broker: Broker
    mongo: Mongo
    run_dir: Path
    origin_url: str
    started_rabbitmq: bool
    own_database: bool  # SecantusDB started for this run (else a fresh database on IMAGEPIPE_MONGO_URL)
    broker_pid: int | None = None  # the RabbitMQ node behind amqp_url, for its CPU time
    compressors: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.settings.base_url

    @classmethod
    async def start(cls, run_dir: Path, corpus_dir: Path) -> BenchStack:
        base = get_settings()
        tag = uuid.uuid4().hex[:8]
        port = free_port()
        overrides = {
            "data_dir": str(run_dir),
            "bus_prefix": f"bench-{tag}",
            "mongo_db": f"bench_{tag}",
            "port": str(port),
            "host": "127.0.0.1",
            "public_base_url": f"http://127.0.0.1:{port}",
            "fetch_allow_private": "true",  # the origin is on 127.0.0.1, as `make run`'s samples are
        }
        started_rabbitmq = await asyncio.to_thread(ensure_rabbitmq, base.amqp_url)
        supervisor = Supervisor(child_env(), log_dir=run_dir / "logs")
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not base.mongo_url:
            db_port = free_port()
            supervisor.start("secantusdb", secantus_argv(run_dir / "db", db_port))
            await asyncio.to_thread(wait_for_port, "127.0.0.1", db_port, 60, "SecantusDB")
            overrides["mongo_url"] = secantus_url(db_port)
        supervisor.env.update({f"IMAGEPIPE_{k.upper()}": v for k, v in overrides.items()})
        settings = Settings(**overrides)  # type: ignore[arg-type]  # pydantic parses the strings

        origin_port = free_port()
        supervisor.start(
            "origin",
            [sys.executable, "-m", "bench.origin", "--dir", str(corpus_dir), "--port", str(origin_port)],
        )
        supervisor.start_services(compressors=0)  # the benchmark sets how many compressors run
        topology = Topology(settings.bus_prefix, tuple(settings.retry_delays_ms))
        broker = await Broker.connect(settings.amqp_url, topology)
        stack = cls(
            settings,
            supervisor,
            broker,
            connect_mongo(settings),
            run_dir,
            f"http://127.0.0.1:{origin_port}",
            started_rabbitmq,
            own_database=not base.mongo_url,
        )
        stack.broker_pid = await asyncio.to_thread(_broker_pid, settings.amqp_url)
        await asyncio.to_thread(wait_for_port, "127.0.0.1", origin_port, 30, "the image origin")
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60, "the API")
        await stack.wait_for(stack._consumers_ready, 60, "status and notifier consuming")
        return stack

    # --- processes ------------------------------------------------------------------------------------
    async def set_compressors(self, count: int) -> None:
        """Run exactly `count` compressor processes, and return once each one consumes (pool warmed up)."""
        await self.stop_compressors()
        for n in range(count):
            name = f"compressor-{n + 1}"
            self.supervisor.start_service("compressor", name)
            self.compressors.append(name)

        async def consuming() -> bool:
            return (await self.broker.state("compressor")).consumers == count

        await self.wait_for(consuming, 120, f"{count} compressors consuming")

    async def stop_compressors(self) -> None:
        for name in self.compressors:
            await asyncio.to_thread(self.supervisor.stop, name, self.settings.shutdown_grace + 5)
        self.compressors.clear()

        async def idle() -> bool:
            return (await self.broker.state("compressor")).consumers == 0

        await self.wait_for(idle, 30, "compressors gone")

    async def restart(self, service: str, **env: str) -> None:
        """A fresh process, so its VmHWM measures only what follows; `env` adds to its environment."""
        await asyncio.to_thread(self.supervisor.stop, service, self.settings.shutdown_grace + 5)
        self.supervisor.start_service(service, **env)
        if service == "upload":
            await asyncio.to_thread(wait_for_port, "127.0.0.1", self.settings.port, 60, "the API")

    def pid(self, name: str) -> int:
        proc = self.supervisor.processes[name].proc
        assert proc is not None
        return proc.pid

    def memory(self, names: Iterable[str] | None = None) -> dict[str, ProcessMemory]:
        """Memory of the managed processes `names` (default all), with their children's (the codec pools)
        listed separately."""
        family = children()
        found = {}
        for name in self.supervisor.processes if names is None else names:
            pid = self.pid(name)
            main = memory(pid)
            if main is not None:
                workers = [m for child in family.get(pid, []) if (m := memory(child)) is not None]
                found[name] = ProcessMemory(main, workers)
        return found

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each managed process; the codec's are counted apart, so its share is
        visible: a process's children (codec processes) as "<name> workers", its codec threads as
        "<name> codec threads" (and not in "<name>")."""
        family = children()
        found = {}
        for name in self.supervisor.processes:
            pid = self.pid(name)
            found[name] = cpu_seconds(pid)
            if workers := family.get(pid):
                found[f"{name} workers"] = sum(cpu_seconds(c) for c in workers)
            elif name.startswith("compressor"):  # its codec on threads (a tiny batch may not use a tick)
                codec = thread_cpu_seconds(pid, CODEC_THREAD)
                found[f"{name} codec threads"] = codec
                found[name] -= codec
        return found

    @property
    def restarts(self) -> int:
        return sum(m.restarts for m in self.supervisor.processes.values())

    # --- waiting --------------------------------------------------------------------------------------
    async def wait_for(
        self, check: Callable[[], Awaitable[T]], within: float, what: str, interval: float = 0.1
    ) -> T:
        """Poll `check` until it returns something truthy, restarting crashed processes meanwhile."""
        deadline = time.monotonic() + within
        while True:
            self.supervisor.poll()
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
            await asyncio.sleep(interval)

    async def _consumers_ready(self) -> bool:
        return all([(await self.broker.state(s)).consumers >= 1 for s in ("status", "notifier")])

    # --- teardown -------------------------------------------------------------------------------------
    async def close(self) -> None:
        await asyncio.to_thread(self.supervisor.stop_all, self.settings.shutdown_grace + 5)
        with contextlib.suppress(Exception):
            await self.broker.delete_topology()
        await self.broker.close()
        if not self.own_database:
            with contextlib.suppress(Exception):
                await self.mongo.drop()
        await self.mongo.close()
        if self.started_rabbitmq:
            proc = await asyncio.create_subprocess_exec("rabbitmqctl", "stop")
            await proc.wait()
