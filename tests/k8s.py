"""The Kubernetes manifests (deploy/k8s) as kustomize builds them, and helpers to read what was built.

kustomize is the one built into kubectl (`kubectl kustomize`), so the checks see exactly what
`kubectl apply -k` would send: generated names, merged patches and all.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.devtools import executable

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("local", "production")
SECRET_TEMPLATES = K8S / "secrets.example.yaml"
CONFIG_MAP = "imagepipe-config"  # the generated ConfigMap every service reads (name plus a content hash)

Obj = dict[str, Any]


def kubectl() -> Path:
    return executable("kubectl", "kustomize runs as `kubectl kustomize`; kubectl comes with the machine")


@dataclass(frozen=True)
class Manifests:
    overlay: str
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def deployment(self, component: str) -> Obj:
        found = [
            d for d in self.of_kind("Deployment") if labels(d).get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"{self.overlay}: {len(found)} Deployments of component {component!r}"
        return found[0]

    @property
    def config(self) -> dict[str, str]:
        """The data of the generated imagepipe-config ConfigMap."""
        maps = [m for m in self.of_kind("ConfigMap") if m["metadata"]["name"].startswith(f"{CONFIG_MAP}-")]
        assert len(maps) == 1, f"{self.overlay}: expected one generated {CONFIG_MAP}, found {len(maps)}"
        data: dict[str, str] = maps[0]["data"]
        return data


@functools.cache
def build(overlay: str) -> Manifests:
    proc = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"kustomize build of {overlay} failed:\n{proc.stderr}"
    return Manifests(overlay, [doc for doc in yaml.safe_load_all(proc.stdout) if doc])


def secret_templates() -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(SECRET_TEMPLATES.read_text()) if doc]


def labels(obj: Obj) -> dict[str, str]:
    result: dict[str, str] = obj["metadata"].get("labels", {})
    return result


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> list[Obj]:
    found: list[Obj] = pod_spec(workload)["containers"]
    return found


def only_container(workload: Obj) -> Obj:
    (container,) = containers(workload)
    return container


def env(container: Obj, manifests: Manifests) -> dict[str, Obj]:
    """Every variable the container gets: from its ConfigMaps ({"value": ...}) and its own `env`."""
    variables: dict[str, Obj] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        config_map = manifests.named("ConfigMap", ref)
        assert config_map is not None, f"envFrom names a ConfigMap that is not built: {ref}"
        variables.update({k: {"value": v} for k, v in config_map["data"].items()})
    variables.update({e["name"]: e for e in container.get("env", [])})
    return variables


def secret_key_refs(container: Obj) -> Iterator[Obj]:
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            yield ref


def port_number(container: Obj, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']} has no port named {port!r}"
    return int(named[port])


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


_BYTES = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(quantity: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|)", str(quantity))
    assert match, f"not a memory quantity: {quantity!r}"
    return float(match.group(1)) * _BYTES[match.group(2)]
