"""cpml-worker as a real process: settings from flags and environment, port file, health, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpml.worker.settings import parse_bytes, settings_from_args


def test_flags_override_environment_defaults():
    env = {
        "CPML_WORKER_LISTEN": "127.0.0.1:7000",
        "CPML_WORKER_SHARE_BYTES_CAP": "2GiB",
        "CPML_WORKER_INSECURE": "true",
        "CPML_WORKER_FAULT_REPLY_DELAY": "0.5",
    }
    s = settings_from_args([], env)
    assert (s.listen, s.share_bytes_cap, s.insecure, s.fault_reply_delay) == ("127.0.0.1:7000", 2 << 30, True, 0.5)
    s = settings_from_args(["--listen", "127.0.0.1:0", "--share-bytes-cap", "512MiB"], env)
    assert (s.listen, s.share_bytes_cap) == ("127.0.0.1:0", 512 << 20)
    assert settings_from_args(["--insecure"], {}).fault_fail_after_rounds == 0  # faults off by default


def test_byte_counts_parse_with_units():
    assert [parse_bytes(t) for t in ("4096", "4k", "3MiB", "1G")] == [4096, 4096, 3 << 20, 1 << 30]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass --insecure to serve plaintext"),
        (["--tls-cert", "c.pem"], "'tls_cert' must come with 'tls_key'"),
        (["--insecure", "--share-bytes-cap", "lots"], "a byte count such as 4096, 512MiB or 4GiB, not 'lots'"),
        (["--insecure", "--tls-client-ca", "ca.pem"], "mutual TLS is TLS"),
    ],
)
def test_bad_settings_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        settings_from_args(argv, {})
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError(f"no port file after {seconds}s")


def test_daemon_serves_health_and_drains_on_sigterm(tmp_path):
    port_file = tmp_path / "port"
    env = {**os.environ, "CPML_WORKER_PORT_FILE": str(port_file), "CPML_WORKER_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpml.worker.cli", "--listen", "127.0.0.1:0", "--insecure", "--drain-seconds", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = _wait_for(port_file, proc)
        assert address.startswith("127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="cpml.v1.Worker"), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert all(line["worker"] == address for line in lines)  # every line names the worker
    events = [line["event"] for line in lines]
    assert events[:2] == [
        "worker serving",
        "serving plaintext (--insecure): anyone on the network path can read the shares",
    ]
    assert events[-2:] == ["draining", "worker stopped"]


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "in-use"])
def test_daemon_that_cannot_bind_exits_3(listen):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if listen == "in-use":
            listen = f"127.0.0.1:{busy.getsockname()[1]}"
        run = subprocess.run(
            [sys.executable, "-m", "cpml.worker.cli", "--listen", listen, "--insecure"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 11
    assert f"cannot serve on {listen}" in run.stderr
