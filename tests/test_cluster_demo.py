"""`make cluster-demo` for real: the images built and docker/compose.yaml run in containers (Docker where an
engine answers, else podman through scripts/cluster_demo.py), training over mutual TLS across containers to
the very weights the same job reaches with local processes; nothing of the cluster is left afterwards, also
after a Ctrl-C. Skipped, with the reason, where containers cannot run."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "scripts" / "cluster_demo.py"
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
LABEL = f"label=com.docker.compose.project={COMPOSE['name']}"
REMOTE_ONLY = ("--workers", "--tls-ca", "--tls-cert", "--tls-key", "--out")


def _docker_answers() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0
    )


def _why_no_containers() -> str | None:
    if _docker_answers():
        return None
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return (
            f"no Docker engine answers and {', '.join(missing)} missing (apt-get install -y podman runc "
            "debootstrap, as .ci/run does when it runs as root)"
        )
    if os.geteuid() != 0:
        return "no Docker engine answers and podman runs as root here (rootless podman is not set up)"
    return None


@pytest.fixture(scope="module")
def engine():
    reason = _why_no_containers()
    if reason is not None:
        pytest.skip(f"container tests skipped: {reason}")
    return "docker" if _docker_answers() else "podman"


def _driver():
    spec = importlib.util.spec_from_file_location("cluster_demo", DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nothing_left(engine: str) -> bool:
    """No container, network or volume of the compose project, checked while no other demo may run."""
    with _driver().LOCK.open("w") as lock:  # another session's demo on this machine would look like ours
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _leftovers(engine) == []


def _leftovers(engine: str) -> list[str]:
    """Containers, networks and volumes of the compose project still on the machine."""
    found = []
    for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        listed = subprocess.run(
            [engine, *kind, "--filter", LABEL, "--format", "{{.Names}}" if kind[0] == "ps" else "{{.Name}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        found += listed.stdout.split()
    return found


def test_cluster_demo_trains_across_containers_to_the_weights_of_local_processes(engine, tmp_path):
    began = time.monotonic()
    demo = subprocess.run(
        [sys.executable, str(DRIVER), "--engine", engine, "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    print(f"cluster demo with {engine}: {time.monotonic() - began:.0f} s")  # builds included (cached after)
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert f"outputs: {tmp_path / 'demo'}" in demo.stdout
    accuracy = re.search(r"test accuracy: ([\d.]+)", demo.stdout).group(1)
    assert float(accuracy) > 0.9
    assert _nothing_left(engine)  # torn down: no container, network or volume of the project

    master = COMPOSE["services"]["master"]["command"]
    flags = [arg for arg in master[2:] if arg.split("=", 1)[0] not in REMOTE_ONLY]
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            *flags,
            "--workers-local",
            "5",
            "--out",
            str(tmp_path / "local"),
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    assert re.search(r"test accuracy: ([\d.]+)", local.stdout).group(1) == accuracy
    weights = [json.loads((tmp_path / run / "model.json").read_text())["weights"] for run in ("demo", "local")]
    assert weights[0] == weights[1]  # bit-identical floats: containers over mutual TLS = local processes
    assert (
        json.loads((tmp_path / "demo" / "model.json").read_text())["privacy"]["transport"]
        != json.loads((tmp_path / "local" / "model.json").read_text())["privacy"]["transport"]
    )


def test_ctrl_c_tears_the_cluster_down(engine, tmp_path):
    demo = subprocess.Popen(
        [sys.executable, str(DRIVER), "--engine", engine, "--out", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 900
        while not any(name.endswith("worker-1-1") for name in _leftovers(engine)):
            assert demo.poll() is None, demo.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no worker container within 900 s"
            time.sleep(0.5)
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, stderr[-3000:]
    assert "interrupted; the cluster is torn down" in stderr
    assert _nothing_left(engine)
