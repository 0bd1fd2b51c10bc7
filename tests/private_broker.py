"""A RabbitMQ node of the test session's own, for the tests that stop and restart the broker.

Stopping the machine's broker would break everything else using it meanwhile (other test runs, `make run`);
this node has its own name, ports and data folder, and is gone when the session ends. It runs the machine's
RabbitMQ installation, so it behaves exactly like the broker the services normally use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from localrun.supervisor import free_port, wait_for_port

NODE_TIMEOUT_S = 90


class PrivateBroker:
    def __init__(self) -> None:
        self.name = f"imagepipe-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="imagepipe-rabbitmq-"))
        self.console_port = free_port()  # where its console listens once the management plugin is on

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        # Erlang terms, not rabbitmq.conf: the .conf refuses settings of a plugin that is not enabled yet.
        (self.base / "advanced.config").write_text(
            f"[{{rabbitmq_management, [{{tcp_config, [{{port, {self.console_port}}}]}}]}}].\n"
        )
        if os.geteuid() == 0:  # the server runs as the rabbitmq user, which must own its files
            shutil.chown(self.base, "rabbitmq", "rabbitmq")
            for child in self.base.iterdir():
                shutil.chown(child, "rabbitmq", "rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
        }
        self.env = env
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=NODE_TIMEOUT_S)
        wait_for_port("127.0.0.1", self.port, NODE_TIMEOUT_S, f"RabbitMQ node {self.name}")

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args], capture_output=True, text=True, timeout=NODE_TIMEOUT_S
        )
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {done.stdout}{done.stderr}"
        return done.stdout

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")
        wait_for_port("127.0.0.1", self.port, 30, f"RabbitMQ node {self.name}")

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.name, "stop"], capture_output=True, timeout=NODE_TIMEOUT_S)
        shutil.rmtree(self.base, ignore_errors=True)


def available() -> bool:
    return shutil.which("rabbitmq-server") is not None and shutil.which("rabbitmqctl") is not None
