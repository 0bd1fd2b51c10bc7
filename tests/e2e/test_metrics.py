"""Every running service exports the families of the metric contract (deploy/prometheus/metrics.yml) on its
health port, and counts what a batch did; the gateway's public port serves no metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localrun.samples import photo
from tests.conftest import eventually
from tests.e2e.test_pipeline import product_csv
from tests.stack import Stack

REPO = Path(__file__).resolve().parents[2]
CONTRACT = yaml.safe_load((REPO / "deploy" / "prometheus" / "metrics.yml").read_text())["metrics"]
# The process scraped for each service of the contract; the bus's families are on every consuming service.
PROCESSES = {"upload": "upload", "compressor": "compressor-1", "status": "status", "notifier": "notifier"}
CONSUMERS = ("compressor", "status", "notifier")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape(stack: Stack, process: str) -> tuple[set[str], Samples]:
    """The families `process` exports (counters under their name with _total) and its samples."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{stack.health_port(process)}/metrics")
    assert response.status_code == 200, response.text
    families, samples = set(), {}
    for family in text_string_to_metric_families(response.text):
        families.add(f"{family.name}_total" if family.type == "counter" else family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


async def test_every_service_exports_its_contract_families_and_counts_a_batch(stack: Stack) -> None:
    stack.origin.images["metrics.jpg"] = photo(320, 240, seed=7)
    csv_text = product_csv([("1", "M1", [stack.origin.url("metrics.jpg"), stack.origin.url("gone.jpg")])])
    request_id = (await stack.upload(csv_text))["request_id"]
    await stack.wait_completed(request_id)
    await eventually(lambda: stack.smtp.for_request(request_id), timeout=30)

    scraped = {service: await _scrape(stack, process) for service, process in PROCESSES.items()}
    for metric in CONTRACT:
        owners = CONSUMERS if metric["service"] == "bus" else (metric["service"],)
        for service in owners:
            assert metric["name"] in scraped[service][0], f"{service} does not export {metric['name']}"

    async def counted() -> bool:  # the notifier counts its notification just after sending the email
        _, notifier = await _scrape(stack, "notifier")
        return _value(notifier, "imagepipe_notifier_notifications_total", channel="email") >= 1

    await eventually(counted, timeout=10)
    upload, status = scraped["upload"][1], scraped["status"][1]
    uploads = _value(upload, "imagepipe_http_request_duration_seconds_count", route="/upload", status="202")
    assert uploads >= 1
    assert _value(upload, "imagepipe_relay_publish_lag_seconds_count") >= 1
    assert _value(status, "imagepipe_status_outcomes_recorded_total", outcome="failed") >= 1
    assert _value(status, "imagepipe_status_completion_lag_seconds_count") >= 1
    compressors = [(await _scrape(stack, f"compressor-{n}"))[1] for n in (1, 2)]
    assert sum(_value(c, "imagepipe_compressor_images_total") for c in compressors) >= 2
    assert _value(status, "imagepipe_bus_messages_handled_total", service="status") >= 2


async def test_the_public_port_serves_no_metrics(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{stack.api}/metrics")).status_code == 404
        assert (await client.get(f"{stack.api}/healthz")).status_code == 200
