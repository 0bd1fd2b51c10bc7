"""deploy/k8s's custom resources (KEDA, RabbitMQ, MongoDB), built by kustomize for each overlay: each has the
structure its operator requires (tests/k8s_shapes.py), every reference between objects resolves, and their
names agree with the services' settings. Every Secret referenced is in the Secret templates or is made by an
operator, and every template entry is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import jsonschema
import pytest

from shared.bus import Topology
from shared.settings import Settings
from tests.k8s import (
    OVERLAYS,
    Manifests,
    Obj,
    build,
    env,
    labels,
    only_container,
    secret_key_refs,
    secret_templates,
)
from tests.k8s_shapes import SHAPES
from tools.asyncapi import CONSUMERS

SecretKey = tuple[str, str]


@pytest.fixture(params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return build(request.param)


def _one(manifests: Manifests, kind: str) -> Obj:
    found = manifests.of_kind(kind)
    assert len(found) == 1, f"{manifests.overlay}: {len(found)} {kind}"
    return found[0]


def _setting(manifests: Manifests, name: str) -> str:
    return manifests.config[name]


def _service_secret(manifests: Manifests, variable: str) -> SecretKey:
    """The (Secret, key) every service reads `variable` from: the same for all of them."""
    refs = set()
    for service in ("upload", *CONSUMERS):
        value = env(only_container(manifests.deployment(service)), manifests)[variable]
        ref = value["valueFrom"]["secretKeyRef"]
        refs.add((ref["name"], ref["key"]))
    assert len(refs) == 1, f"the services read {variable} from different Secrets: {refs}"
    return refs.pop()


# --- structure ----------------------------------------------------------------------------------------------
def test_custom_resources_have_the_structure_their_operators_require(manifests: Manifests) -> None:
    problems = []
    for obj in manifests.objects:
        shape = SHAPES.get((obj["apiVersion"], obj["kind"]))
        if shape is not None:
            for error in jsonschema.Draft7Validator(shape).iter_errors(obj):
                path = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}")
    assert not problems, "\n".join(problems)


def test_the_structure_check_rejects_a_misspelt_field_and_a_number_where_keda_wants_text() -> None:
    scaled = dict(_one(build("production"), "ScaledObject"))
    scaled["spec"] = {**scaled["spec"], "maxReplicas": 5}
    trigger = {**scaled["spec"]["triggers"][0], "metadata": {"queueName": "q", "value": 4800}}
    scaled["spec"]["triggers"] = [trigger]
    messages = [
        e.message
        for e in jsonschema.Draft7Validator(SHAPES[("keda.sh/v1alpha1", "ScaledObject")]).iter_errors(scaled)
    ]
    assert any("'maxReplicas' was unexpected" in m for m in messages)
    assert any("4800 is not of type 'string'" in m for m in messages)


# --- KEDA ---------------------------------------------------------------------------------------------------
def test_keda_scales_the_compressors_on_their_own_queue(manifests: Manifests) -> None:
    scaled = _one(manifests, "ScaledObject")
    spec = scaled["spec"]
    target = manifests.named(spec["scaleTargetRef"].get("kind", "Deployment"), spec["scaleTargetRef"]["name"])
    assert target is not None and labels(target)["app.kubernetes.io/component"] == "compressor"
    assert "replicas" not in target["spec"], "an apply would reset what the autoscaler chose"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    prefix = _setting(manifests, "IMAGEPIPE_BUS_PREFIX")
    assert metadata["queueName"] == Topology(prefix, ()).queue("compressor")
    assert metadata["mode"] == "QueueLength" and float(metadata["value"]) > 0
    assert metadata["protocol"] == "amqp"  # counts ready messages; needs no management API user
    # At least one: the compressor declares its queue, and publishing needs that queue bound.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    auth = manifests.named("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth is not None, "authenticationRef names no TriggerAuthentication"
    (host,) = auth["spec"]["secretTargetRef"]
    assert host["parameter"] == "host"
    assert (host["name"], host["key"]) == _service_secret(manifests, "IMAGEPIPE_AMQP_URL")


def test_production_scales_out_further_than_local() -> None:
    local, production = (_one(build(o), "ScaledObject")["spec"] for o in ("local", "production"))
    assert production["maxReplicaCount"] > local["maxReplicaCount"] >= 1


# --- RabbitMQ -----------------------------------------------------------------------------------------------
def test_the_broker_is_a_cluster_of_an_odd_number_of_nodes(manifests: Manifests) -> None:
    cluster = _one(manifests, "RabbitmqCluster")
    replicas = cluster["spec"]["replicas"]
    assert replicas % 2 == 1, "quorum queues need a majority: an odd number of nodes"
    assert replicas == (3 if manifests.overlay == "production" else 1)
    assert cluster["spec"]["persistence"]["storage"]
    assert (
        cluster["spec"]["resources"]["limits"]["memory"] == cluster["spec"]["resources"]["requests"]["memory"]
    )


def test_the_services_rabbitmq_user_is_the_one_in_their_url(manifests: Manifests) -> None:
    cluster, user = _one(manifests, "RabbitmqCluster"), _one(manifests, "User")
    assert user["spec"]["rabbitmqClusterReference"]["name"] == cluster["metadata"]["name"]
    credentials = user["spec"]["importCredentialsSecret"]["name"]
    secret, key = _service_secret(manifests, "IMAGEPIPE_AMQP_URL")
    assert credentials == secret, "the user's credentials and the services' URL must be one Secret"
    template = _templates()[secret]
    url = urlsplit(template[key])
    assert (
        url.scheme == "amqp" and url.username == template["username"] and url.password == template["password"]
    )
    namespace = cluster["metadata"]["namespace"]
    assert (url.hostname, url.port) == (f"{cluster['metadata']['name']}.{namespace}.svc", 5672)
    permission = _one(manifests, "Permission")
    assert url.path == "/" and permission["spec"]["vhost"] == "/"


def _bus_names(prefix: str) -> Iterator[str]:
    topology = Topology(prefix, tuple(Settings.model_construct().retry_delays_ms))
    yield topology.exchange
    for service in CONSUMERS:
        yield from topology.queues(service)


def test_the_services_may_use_their_exchange_and_queues_and_nothing_else(manifests: Manifests) -> None:
    permission = _one(manifests, "Permission")
    assert permission["spec"]["userReference"]["name"] == _one(manifests, "User")["metadata"]["name"]
    cluster = _one(manifests, "RabbitmqCluster")["metadata"]["name"]
    assert permission["spec"]["rabbitmqClusterReference"]["name"] == cluster
    granted = permission["spec"]["permissions"]
    prefix = _setting(manifests, "IMAGEPIPE_BUS_PREFIX")
    for name in _bus_names(prefix):
        for kind in ("configure", "write", "read"):
            assert re.search(granted[kind], name), f"{kind} does not allow {name}"
    # Retries and parking go through the default exchange.
    assert re.search(granted["write"], "amq.default")
    for name in _bus_names(f"not{prefix}"):
        assert not any(re.search(granted[kind], name) for kind in granted), f"{name} is not ours"


# --- MongoDB ------------------------------------------------------------------------------------------------
def test_the_database_is_a_replica_set_the_services_connect_to(manifests: Manifests) -> None:
    mongodb = _one(manifests, "MongoDBCommunity")
    spec = mongodb["spec"]
    assert spec["type"] == "ReplicaSet", "transactions need a replica set"
    assert spec["members"] % 2 == 1
    assert spec["members"] == (3 if manifests.overlay == "production" else 1)
    assert spec["security"]["authentication"]["modes"] == ["SCRAM"]
    (user,) = spec["users"]
    assert {"name": "readWrite", "db": _setting(manifests, "IMAGEPIPE_MONGO_DB")} in user["roles"]
    secret, key = _service_secret(manifests, "IMAGEPIPE_MONGO_URL")
    assert (user["connectionStringSecretName"], "connectionString.standard") == (secret, key)


# --- disruption budgets of the operators' pods ---------------------------------------------------------------
def test_broker_and_database_pods_are_drained_one_at_a_time(manifests: Manifests) -> None:
    operator_pod_labels = {
        "RabbitmqCluster": lambda name: {"app.kubernetes.io/name": name},  # the Cluster Operator's
        "MongoDBCommunity": lambda name: {"app": f"{name}-svc"},  # the Community Operator's
    }
    budgets = [b["spec"] for b in manifests.of_kind("PodDisruptionBudget")]
    for kind, pod_labels in operator_pod_labels.items():
        selector = {"matchLabels": pod_labels(_one(manifests, kind)["metadata"]["name"])}
        (budget,) = [b for b in budgets if b["selector"] == selector]
        assert budget["maxUnavailable"] == 1


# --- Secrets ------------------------------------------------------------------------------------------------
def _templates() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in secret_templates()}


def _operator_made(manifests: Manifests) -> set[SecretKey]:
    """The connection-string Secret the MongoDB operator writes for each user."""
    made = set()
    for mongodb in manifests.of_kind("MongoDBCommunity"):
        for user in mongodb["spec"]["users"]:
            name = (
                user.get("connectionStringSecretName")
                or f"{mongodb['metadata']['name']}-{user['db']}-{user['name']}"
            )
            made |= {
                (name, k)
                for k in ("connectionString.standard", "connectionString.standardSrv", "username", "password")
            }
    return made


def _secret_uses(manifests: Manifests) -> Iterator[tuple[str, SecretKey]]:
    """(who, (Secret, key)) for every Secret key any object reads."""
    for deployment in manifests.of_kind("Deployment"):
        for ref in secret_key_refs(only_container(deployment)):
            yield deployment["metadata"]["name"], (ref["name"], ref["key"])
    for auth in manifests.of_kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            yield auth["metadata"]["name"], (ref["name"], ref["key"])
    for user in manifests.of_kind("User"):
        secret = user["spec"]["importCredentialsSecret"]["name"]
        yield from ((f"User/{user['metadata']['name']}", (secret, key)) for key in ("username", "password"))
    for mongodb in manifests.of_kind("MongoDBCommunity"):
        for user in mongodb["spec"]["users"]:
            ref = user["passwordSecretRef"]
            yield mongodb["metadata"]["name"], (ref["name"], ref.get("key", "password"))
    for ingress in manifests.of_kind("Ingress"):
        for tls in ingress["spec"].get("tls", []):
            yield from ((ingress["metadata"]["name"], (tls["secretName"], k)) for k in ("tls.crt", "tls.key"))


def test_every_secret_read_is_in_the_templates_or_made_by_an_operator(manifests: Manifests) -> None:
    available = {(name, key) for name, data in _templates().items() for key in data} | _operator_made(
        manifests
    )
    missing = {
        f"{who}: {secret}.{key}"
        for who, (secret, key) in _secret_uses(manifests)
        if (secret, key) not in available
    }
    assert not missing, "add them to deploy/k8s/secrets.example.yaml"


def test_every_template_entry_is_read_by_something() -> None:
    used = {use for overlay in OVERLAYS for _, use in _secret_uses(build(overlay))}
    unused = {(name, key) for name, data in _templates().items() for key in data} - used
    assert not unused, "secrets.example.yaml holds keys nothing reads"
