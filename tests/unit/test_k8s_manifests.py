"""deploy/k8s, built by kustomize for each overlay: every built-in object is valid for Kubernetes 1.30 (strict
schemas, offline, from kubernetes-validate), and the services are deployed the way they need to run.

The custom resources (KEDA, RabbitMQ, MongoDB) are checked in test_k8s_custom_resources.py.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from localrun.supervisor import SERVICES
from services.upload.app import create_app
from shared.settings import Settings
from tests.k8s import (
    OVERLAYS,
    REPO,
    Manifests,
    Obj,
    build,
    containers,
    cpu_cores,
    env,
    kubectl,
    labels,
    memory_bytes,
    only_container,
    pod_spec,
    port_number,
    secret_templates,
)
from tests.k8s_shapes import SHAPES

KUBERNETES = "1.30"
CUSTOM_KINDS = set(SHAPES)  # checked in test_k8s_custom_resources.py
GATEWAY = "upload"
# Every service, the gateway included, serves /healthz, /readyz and /metrics on IMAGEPIPE_HEALTH_PORT.
OPERATIONAL_ROUTES = {"/healthz", "/readyz", "/metrics"}  # never exposed by the Ingress
SECRET_NAME = re.compile(r"PASS|SECRET|KEY|TOKEN", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/@\s]+:[^/@\s]+@")


@pytest.fixture(params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return build(request.param)


def _image_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (REPO / "deploy" / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "deploy/Dockerfile sets no numeric USER"
    return int(users[-1])


def _selects(selector: Obj, pod_labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are used here: {selector}"
    return all(pod_labels.get(k) == v for k, v in selector["matchLabels"].items())


def _pod_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


# --- kustomize and the Kubernetes schemas -----------------------------------------------------------------
def test_kustomize_is_version_5() -> None:
    proc = subprocess.run(
        [str(kubectl()), "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    version = json.loads(proc.stdout)["kustomizeVersion"]
    assert version.startswith("v5."), f"the manifests use kustomize v5 features; kubectl has {version}"


def _schema_problems(obj: Obj) -> list[str]:
    where = f"{obj['kind']}/{obj['metadata'].get('name')}"
    try:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        return [f"{where}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: {obj['apiVersion']} is neither a Kubernetes {KUBERNETES} API nor a checked CRD"]
    return []


def test_every_built_in_object_is_valid_for_kubernetes_1_30_strictly(manifests: Manifests) -> None:
    problems = [
        problem
        for obj in manifests.objects
        if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS
        for problem in _schema_problems(obj)
    ]
    assert not problems, "\n".join(problems)


def test_the_schema_check_rejects_an_unknown_field_and_an_unknown_api() -> None:
    deployment = copy.deepcopy(build("production").deployment(GATEWAY))
    only_container(deployment)["livenessProbes"] = {}
    assert "'livenessProbes' was unexpected" in " ".join(_schema_problems(deployment))
    deployment = copy.deepcopy(build("production").deployment(GATEWAY))
    deployment["apiVersion"] = "apps/v2"
    assert _schema_problems(deployment)


def test_secret_templates_are_valid_secrets_holding_placeholders_only() -> None:
    templates = secret_templates()
    assert templates
    for secret in templates:
        assert secret["kind"] == "Secret"
        assert not _schema_problems(secret)
        assert "data" not in secret, "templates use stringData (readable placeholders)"
        for key, value in secret["stringData"].items():
            assert key == "username" or "change-me" in value, (
                f"{secret['metadata']['name']}.{key} is not a placeholder"
            )


def test_no_secret_is_written_in_the_manifests(manifests: Manifests) -> None:
    assert not manifests.of_kind("Secret"), (
        "Secrets are created apart from the manifests (secrets.example.yaml)"
    )
    for deployment in manifests.of_kind("Deployment"):
        for container in containers(deployment):
            for name, variable in env(container, manifests).items():
                value = variable.get("value")
                if value is None:
                    continue
                assert not SECRET_NAME.search(name), f"{name} is set in the manifests; read it from a Secret"
                assert not URL_WITH_PASSWORD.search(value), f"{name} embeds a password"


# --- the services ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_module_unprivileged(manifests: Manifests, service: str) -> None:
    deployment = manifests.deployment(service)
    container = only_container(deployment)
    assert container["command"] == ["python", "-m", f"services.{service}"]
    pod = pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _image_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    hardening = container["securityContext"]
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("service", SERVICES)
def test_the_paths_a_service_writes_are_volumes(manifests: Manifests, service: str) -> None:
    container = only_container(manifests.deployment(service))
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", env(container, manifests)["IMAGEPIPE_DATA_DIR"]["value"]} <= mounted


def test_every_pod_runs_as_non_root_without_privilege_escalation(manifests: Manifests) -> None:
    for deployment in manifests.of_kind("Deployment"):
        assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True
        for container in containers(deployment):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("service", SERVICES)
def test_probes_and_scraping_use_the_port_serving_health_and_metrics(
    manifests: Manifests, service: str
) -> None:
    deployment = manifests.deployment(service)
    container = only_container(deployment)
    setting = "IMAGEPIPE_HEALTH_PORT"
    port = int(env(container, manifests)[setting]["value"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert port_number(container, get["port"]) == port, f"{service} {probe} is not on {setting}"
    scrape = deployment["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/scrape"] == "true"
    assert int(scrape["prometheus.io/port"]) == port
    assert scrape["prometheus.io/path"] == "/metrics"


def test_every_container_requests_and_limits_cpu_and_memory(manifests: Manifests) -> None:
    for deployment in manifests.of_kind("Deployment"):
        for container in containers(deployment):
            resources = container["resources"]
            for name, parse in (("cpu", cpu_cores), ("memory", memory_bytes)):
                request, limit = parse(resources["requests"][name]), parse(resources["limits"][name])
                assert 0 < request <= limit, f"{container['name']}: {name} request {request} > limit {limit}"


@pytest.mark.parametrize("service", SERVICES)
def test_termination_grace_outlasts_the_drain(manifests: Manifests, service: str) -> None:
    deployment = manifests.deployment(service)
    container = only_container(deployment)
    drain = float(env(container, manifests)["IMAGEPIPE_SHUTDOWN_GRACE"]["value"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    waits = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > drain + waits


def test_each_service_has_a_disruption_budget_of_its_own(manifests: Manifests) -> None:
    budgets = manifests.of_kind("PodDisruptionBudget")
    for service in SERVICES:
        pods = _pod_labels(manifests.deployment(service))
        mine = [b for b in budgets if _selects(b["spec"]["selector"], pods)]
        assert len(mine) == 1, f"{service}: {len(mine)} PodDisruptionBudgets select its pods"
        others = [_pod_labels(d) for d in manifests.of_kind("Deployment") if _pod_labels(d) != pods]
        assert not any(_selects(mine[0]["spec"]["selector"], o) for o in others)
        assert "maxUnavailable" in mine[0]["spec"], "maxUnavailable lets a single replica be drained"


def test_compressor_runs_one_codec_worker_per_core_of_its_cpu_limit(manifests: Manifests) -> None:
    container = only_container(manifests.deployment("compressor"))
    workers = int(env(container, manifests)["IMAGEPIPE_CODEC_WORKERS"]["value"])
    assert workers == cpu_cores(container["resources"]["limits"]["cpu"])


def test_the_services_run_one_tagged_image(manifests: Manifests) -> None:
    images = {only_container(manifests.deployment(s))["image"] for s in SERVICES}
    assert len(images) == 1, images
    name, _, tag = images.pop().rpartition(":")
    assert name and tag and tag != "latest"


def test_everything_is_in_one_namespace_held_to_a_pod_security_standard(manifests: Manifests) -> None:
    (namespace,) = manifests.of_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    for obj in manifests.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], obj["metadata"]["name"]
            assert labels(obj)["app.kubernetes.io/part-of"] == "imagepipe", obj["metadata"]["name"]


# --- settings: what the services read ---------------------------------------------------------------------
def test_every_setting_in_the_manifests_is_one_the_services_read(manifests: Manifests) -> None:
    known = {f"IMAGEPIPE_{name.upper()}" for name in Settings.model_fields}
    given = {
        name
        for service in SERVICES
        for name in env(only_container(manifests.deployment(service)), manifests)
        if name.startswith("IMAGEPIPE_")
    }
    assert given - known == set(), "not settings (see shared/settings.py)"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_gets_every_setting_docker_compose_gives_it(manifests: Manifests, service: str) -> None:
    compose: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    wanted = set(compose["services"][service]["environment"])
    given = set(env(only_container(manifests.deployment(service)), manifests))
    assert wanted - given == set(), f"docker-compose.yml gives {service} these; the manifests do not"


# --- reaching the gateway ---------------------------------------------------------------------------------
def test_every_service_object_reaches_pods_on_their_named_ports(manifests: Manifests) -> None:
    for service in manifests.of_kind("Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        targets = [d for d in manifests.of_kind("Deployment") if _selects(selector, _pod_labels(d))]
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)} Deployments"
        for port in service["spec"]["ports"]:
            assert isinstance(port["targetPort"], str), "target ports by name: they follow the container"
            port_number(only_container(targets[0]), port["targetPort"])


def _ingress() -> Obj:
    (ingress,) = build("production").of_kind("Ingress")
    return ingress


def _ingress_paths() -> list[Obj]:
    return [path for rule in _ingress()["spec"]["rules"] for path in rule["http"]["paths"]]


def test_the_ingress_sends_everything_to_the_gateway_service_over_tls() -> None:
    production = build("production")
    service = production.named("Service", f"imagepipe-{GATEWAY}")
    assert service is not None
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for path in _ingress_paths():
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in port_names
    hosts = {rule["host"] for rule in _ingress()["spec"]["rules"]}
    tls = _ingress()["spec"]["tls"]
    assert hosts <= {h for entry in tls for h in entry["hosts"]}
    assert {entry["secretName"] for entry in tls} <= {s["metadata"]["name"] for s in secret_templates()}
    # ingress-nginx refuses bodies over 1 MiB unless told: the CSV limit must get through.
    allowed = _ingress()["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert memory_bytes(allowed.replace("m", "Mi")) > Settings().max_csv_bytes


def _exposed(route: str) -> bool:
    concrete = re.sub(r"\{[^}]+\}", "x", route)
    for path in _ingress_paths():
        if path["pathType"] == "Exact" and concrete == path["path"]:
            return True
        prefix = path["path"].rstrip("/").split("/")
        if path["pathType"] == "Prefix" and concrete.split("/")[: len(prefix)] == prefix:
            return True
    return False


def _gateway_routes() -> set[str]:
    app = create_app(Settings(mongo_url="mongodb://127.0.0.1:9/"))  # never connected: only its routes
    routes = set(app.openapi()["paths"])
    # FastAPI wraps each included router; its own routes (the page's, outside the schema) are inside.
    found = [*app.routes]
    found += [
        r
        for included in app.routes
        for r in getattr(getattr(included, "original_router", None), "routes", [])
    ]
    routes |= {route.path for route in found if isinstance(getattr(route, "path", None), str)}
    return routes


def test_the_ingress_exposes_every_api_route_and_no_operational_one() -> None:
    routes = _gateway_routes()
    assert routes >= {"/healthz", "/readyz"} and "/upload" in routes
    assert "/metrics" not in routes, "the gateway's metrics are on its health port, not the API's"
    unexposed = {r for r in routes - OPERATIONAL_ROUTES if not _exposed(r)}
    assert not unexposed, "add these routes to deploy/k8s/overlays/production/ingress.yaml"
    assert not {r for r in OPERATIONAL_ROUTES if _exposed(r)}, "health and metrics must stay internal"


def test_the_route_check_sees_through_prefixes() -> None:
    assert _exposed("/status/{request_id}") and _exposed("/docs/oauth2-redirect")
    assert not _exposed("/statusx") and not _exposed("/upload/more") and not _exposed("/healthzz")
