"""deploy/k8s/: the manifests validate offline against the Kubernetes JSON schemas that the kubernetes-validate
package ships (strict: no unknown field), and they fit together: the headless Service names every pod of the
worker StatefulSet, the master Job addresses exactly those pods over mutual TLS from its Secret, and each
worker's memory limit covers its --share-bytes-cap."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cpml.worker.settings import parse_bytes

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
_QUANTITY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def _documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str) -> dict:
    (found,) = [doc for doc in _documents() if doc["kind"] == kind]
    return found


def _env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMG]i)", quantity).groups()
    return int(number) * _QUANTITY[unit]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_matches_the_kubernetes_schemas(version):
    kinds = []
    for doc in _documents():
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Job", "NetworkPolicy", "PersistentVolumeClaim", "Service", "StatefulSet"]


@pytest.mark.parametrize("mistake", ["a string for replicas", "an unknown field"])
def test_schema_validation_would_catch_a_mistake(mistake):
    broken = _one("StatefulSet")
    if mistake == "a string for replicas":
        broken["spec"]["replicas"] = "five"
    else:
        broken["spec"]["template"]["spec"]["containers"][0]["memoryLimit"] = "4Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_master_job_addresses_every_worker_pod_over_mutual_tls():
    service, workers, job = _one("Service"), _one("StatefulSet"), _one("Job")
    assert service["spec"]["clusterIP"] == "None"  # headless: a DNS name per pod
    assert workers["spec"]["serviceName"] == service["metadata"]["name"]
    pod = workers["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    pods = [
        f"{workers['metadata']['name']}-{i}.{service['metadata']['name']}" for i in range(workers["spec"]["replicas"])
    ]
    master = job["spec"]["template"]["spec"]["containers"][0]
    flags = dict(arg.split("=", 1) for arg in master["command"] if arg.startswith("--"))
    assert flags["--workers"].split(",") == [f"{p}:50051" for p in pods]
    worker = pod["spec"]["containers"][0]
    assert _env(worker)["CPML_WORKER_MPC_PEER_HOSTS"].split(",") == pods
    assert _env(worker)["CPML_WORKER_LISTEN"].endswith(":50051")
    # mutual TLS on both sides, each from its own Secret mounted where the flags look
    assert {"CPML_WORKER_TLS_CERT", "CPML_WORKER_TLS_KEY", "CPML_WORKER_TLS_CLIENT_CA"} <= set(_env(worker))
    assert "CPML_WORKER_INSECURE" not in _env(worker) and "--insecure" not in master["command"]
    for spec, container, paths in (
        (pod["spec"], worker, _env(worker).values()),
        (job["spec"]["template"]["spec"], master, flags.values()),
    ):
        secret = next(v for v in spec["volumes"] if "secret" in v)
        mount = next(m for m in container["volumeMounts"] if m["name"] == secret["name"])
        assert mount["readOnly"] is True
        assert all(p.startswith(mount["mountPath"] + "/") for p in paths if p.endswith((".pem", ".key")))
    policy = _one("NetworkPolicy")
    allowed = [peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert any(labels.items() <= job["spec"]["template"]["metadata"]["labels"].items() for labels in allowed)


def test_worker_limits_cover_the_share_bytes_cap_and_images_are_split():
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    cap = parse_bytes(_env(worker)["CPML_WORKER_SHARE_BYTES_CAP"])
    limit = _bytes(worker["resources"]["limits"]["memory"])
    assert limit >= 3 * cap + (256 << 20)  # the share, its float64 copy while computing, the interpreter
    assert _bytes(worker["resources"]["requests"]["memory"]) == limit  # never evicted for memory mid-job
    assert worker["image"].startswith("cpml-worker:")  # the worker image: base install, no extras
    master = _one("Job")["spec"]["template"]["spec"]["containers"][0]
    assert master["image"].startswith("cpml:")
    for container, spec in ((worker, pod), (master, _one("Job")["spec"]["template"]["spec"])):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_job_trains_what_the_compose_master_trains():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]["master"]["command"]
    job = _one("Job")["spec"]["template"]["spec"]["containers"][0]["command"]
    where = ("--workers", "--out", "--connect-timeout")  # hosts, paths and patience differ; the job does not
    same = [[arg for arg in command if arg.split("=", 1)[0] not in where] for command in (compose, job)]
    assert same[0] == same[1]
