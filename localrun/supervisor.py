"""Start, watch and stop local processes: the services, SecantusDB, the sample origin.

`make run` and the end-to-end and fault tests use the same code, so what the tests exercise is what a
person runs. A process that dies unexpectedly is restarted (with a short backoff), as compose's restart
policy does in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog

from shared.retry import backoff_delay

log = structlog.get_logger()

# Every service, in start order: `make run`, the tests and the benchmark all start the system from this list.
SERVICES = ("upload", "status", "notifier", "compressor")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start listening on {host}:{port} within {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class Managed:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path | None
    restart: bool
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    _out: IO[bytes] | None = None

    def start(self) -> None:
        if self.log_file is not None:
            self._out = self.log_file.open("ab")
        # In a process group of its own, so that what it starts (the compressor's codec processes) goes
        # with it: a service killed outright would otherwise leave them running, orphaned.
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._out, stderr=self._out, start_new_session=True
        )

    def kill_leftovers(self) -> None:
        """Kill whatever the process left behind in its group once it is gone."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    env: dict[str, str]
    log_dir: Path | None = None  # None: children write to our stdout/stderr
    restart: bool = True
    processes: dict[str, Managed] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        extra_env: dict[str, str] | None = None,
        restart: bool | None = None,
        log_file: Path | None = None,
    ) -> Managed:
        """`log_file` (or `log_dir`/<name>.log) takes the process's output; else it goes to ours."""
        log_file = log_file or (self.log_dir / f"{name}.log" if self.log_dir else None)
        managed = Managed(
            name,
            argv,
            {**self.env, **(extra_env or {})},
            log_file,
            self.restart if restart is None else restart,
        )
        managed.start()
        self.processes[name] = managed
        log.info("process_started", process=name, pid=managed.proc.pid if managed.proc else None)
        return managed

    def start_service(self, service: str, instance: str | None = None, **env: str) -> Managed:
        return self.start(instance or service, [sys.executable, "-m", f"services.{service}"], extra_env=env)

    def start_services(self, compressors: int, *, services: tuple[str, ...] = SERVICES) -> None:
        """Start `services` (default: the whole system), with `compressors` compressor processes named
        compressor-1, compressor-2, ..."""
        for service in services:
            if service != "compressor":
                self.start_service(service)
        for n in range(compressors if "compressor" in services else 0):
            self.start_service("compressor", f"compressor-{n + 1}")

    def poll(self) -> None:
        """Restart any process that died; call this periodically."""
        now = time.monotonic()
        for managed in self.processes.values():
            if managed.alive or not managed.restart or managed.proc is None:
                continue
            if managed.next_start == 0.0:
                managed.kill_leftovers()
                code = managed.proc.returncode
                delay = backoff_delay(managed.restarts, base=0.5, max_delay=10.0, jitter=0.0)
                log.warning(
                    "process_died_restarting", process=managed.name, exit_code=code, restart_in_s=delay
                )
                managed.next_start = now + delay
            elif now >= managed.next_start:
                managed.restarts += 1
                managed.next_start = 0.0
                managed.start()
                log.info("process_restarted", process=managed.name, restarts=managed.restarts)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        managed = self.processes[name]
        assert managed.proc is not None
        managed.proc.send_signal(sig)
        managed.proc.wait(30)

    def stop(self, name: str, grace: float = 30.0) -> None:
        managed = self.processes.pop(name)
        _terminate([managed], grace)

    def stop_all(self, grace: float = 30.0) -> None:
        _terminate(list(self.processes.values()), grace)
        self.processes.clear()


def _terminate(processes: list[Managed], grace: float) -> None:
    for m in processes:
        m.restart = False
        if m.alive and m.proc is not None:
            m.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for m in processes:
        if m.proc is None:
            continue
        try:
            m.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("process_killed_after_grace", process=m.name)
            m.proc.kill()
            m.proc.wait()
        m.kill_leftovers()
        if m._out is not None:
            m._out.close()


def secantus_argv(storage: Path, port: int, sync_on_commit: bool = True) -> list[str]:
    """The command line of a SecantusDB server on `port`, keeping its files under `storage`.

    `sync_on_commit` makes every acknowledged write survive the server being killed: without it, a
    kill -9 loses the last few commits, which the services were told were stored (tests/faults).
    """
    storage.mkdir(parents=True, exist_ok=True)
    binary = Path(sys.executable).parent / "secantusd-py"
    argv = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)]
    return [*argv, "--sync-on-commit"] if sync_on_commit else argv


def secantus_url(port: int) -> str:
    # No retryable writes: SecantusDB scans (and at its cap, sorts) its record of them on every write, so
    # each write would cost more as a long run goes on. Our writes are idempotent and retried by the bus.
    return f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()}
    env.update(overrides)
    return env
