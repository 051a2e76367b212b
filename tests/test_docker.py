"""docker/: the compose file validates against the Compose JSON schema (offline), the image runs as a
non-root user, and what every compose service runs works as local processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker" / "compose.yaml"
# Vendored from the check-jsonschema wheel (check_jsonschema/builtin_schemas/vendor/compose-spec.json,
# Apache-2.0, see tests/data/LICENSE.compose-spec): no network needed to validate.
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(compose)


def test_schema_validation_would_catch_a_mistake(compose):
    schema = json.loads(SCHEMA.read_text())
    broken = {
        **compose,
        "services": {**compose["services"], "master": {**compose["services"]["master"], "depends_on": 5}},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


def test_workers_run_the_worker_image_and_the_master_the_full_one(compose):
    services = compose["services"]
    for name, service in services.items():
        extras = service["build"]["args"]["EXTRAS"]
        assert (service["image"], extras) == (
            ("cpml-worker:latest", "") if name.startswith("worker-") else ("cpml:latest", "all")
        )


def test_master_uses_every_worker_over_mutual_tls_once_they_are_healthy(compose):
    services = compose["services"]
    workers = sorted(name for name in services if name.startswith("worker-"))
    assert len(workers) >= 4
    master = services["master"]
    flag = next(a for a in master["command"] if a.startswith("--workers="))
    assert flag.split("=", 1)[1].split(",") == [f"{w}:50051" for w in workers]
    assert set(master["depends_on"]) == set(workers)
    assert "--insecure" not in master["command"]
    assert {"--tls-ca=/certs/ca.pem", "--tls-cert=/certs/master.pem"} <= set(master["command"])
    for name in workers:
        env = services[name]["environment"]
        assert "CPML_WORKER_INSECURE" not in env and env["CPML_WORKER_TLS_CLIENT_CA"] == "/certs/ca.pem"
        assert services[name]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    hosts = services["certs"]["command"][services["certs"]["command"].index("--hosts") + 1].split(",")
    assert set(workers) <= set(hosts)  # the worker certificate names every worker
    assert compose["networks"]["cluster"]["internal"] is True


def test_image_is_slim_and_runs_as_a_non_root_user():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE)[-1] == "${BASE}"
    assert re.search(r"^ARG BASE=(\S+)", text, re.MULTILINE).group(1).endswith("-slim")
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")


def _swap(text: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _run_service_locally(service: dict, replace: dict[str, str], extra_env: dict[str, str], **popen):
    command = [_swap(arg, replace) for arg in service["command"]]
    env = {**os.environ, **{k: _swap(str(v), replace) for k, v in service.get("environment", {}).items()}, **extra_env}
    return subprocess.Popen(command, env=env, **popen)


def _wait_for_file(path: Path, proc: subprocess.Popen, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


@pytest.mark.slow
def test_every_compose_service_runs_as_a_local_process(compose, tmp_path):
    path = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    services = compose["services"]
    workers = sorted(name for name in services if name.startswith("worker-"))
    # the containers' volumes become directories; nothing but 127.0.0.1 / localhost is contacted
    volumes = {"/certs/": f"{tmp_path}/certs/", "/runs/": f"{tmp_path}/runs/"}
    certs = _run_service_locally(services["certs"], {"/certs": f"{tmp_path}/certs"}, path)
    assert certs.wait(timeout=60) == 0
    procs: list[subprocess.Popen] = []
    try:
        ports = {}
        for name in workers:
            port_file = tmp_path / f"{name}.port"
            procs.append(
                _run_service_locally(
                    services[name],
                    volumes,
                    {"CPML_WORKER_LISTEN": "127.0.0.1:0", "CPML_WORKER_PORT_FILE": str(port_file), **path},
                    stderr=subprocess.DEVNULL,
                )
            )
            ports[name] = _wait_for_file(port_file, procs[-1]).rsplit(":", 1)[1]
        for name in workers:  # the compose health check (mutual TLS), pointed at the local port
            check = [
                _swap(a, {"localhost:50051": f"localhost:{ports[name]}", **volumes})
                for a in services[name]["healthcheck"]["test"][1:]
            ]
            probe = subprocess.run(
                check, check=False, capture_output=True, text=True, timeout=60, env={**os.environ, **path}
            )  # the healthcheck's `python` is this venv's
            assert probe.stdout.strip() == "SERVING", probe.stderr
        replace = {f"{name}:50051": f"localhost:{ports[name]}" for name in workers} | volumes
        master = _run_service_locally(
            services["master"], replace, path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(master)
        out, err = master.communicate(timeout=240)
        assert master.returncode == 0, err[-2000:]
        assert "plaintext" not in err  # mutual TLS end to end: no plaintext warning
        accuracy = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
        assert accuracy > 0.9
        assert (tmp_path / "runs" / "compose" / "curves.png").exists()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
