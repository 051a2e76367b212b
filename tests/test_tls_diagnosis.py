"""A master whose TLS settings do not match the workers' is told why within seconds, not at its deadline."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers_cluster import running_worker
from sklearn.datasets import load_breast_cancer

from cpml.master.cluster import Cluster, Timeouts, WorkersUnreachable
from cpml.wire.tls import channel_credentials
from cpml.wire.tls_diagnosis import TlsSettings, diagnose


def tls_worker(pki, mutual=False):
    return running_worker(
        insecure=False, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca if mutual else None
    )


CASES = {
    "plaintext master, TLS worker": (False, lambda p, s: None, "serves TLS but the master connects in plaintext"),
    "TLS master, plaintext worker": (None, lambda p, s: TlsSettings(p.ca), "speaks plaintext but the master uses TLS"),
    "unknown CA": (False, lambda p, s: TlsSettings(s.ca), "is not signed by the CA in --tls-ca"),
    "wrong host name": (
        False,
        lambda p, s: TlsSettings(p.ca, server_name="elsewhere.example"),
        "is not issued for 'elsewhere.example'",
    ),
    "no client certificate": (True, lambda p, s: TlsSettings(p.ca), "demands a client certificate"),
    "foreign client certificate": (
        True,
        lambda p, s: TlsSettings(p.ca, s.client_cert, s.client_key),
        "refused the master's client certificate",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_tls_mistake_is_named(pki, stranger, case):
    mutual, settings, expected = CASES[case]
    worker = running_worker() if mutual is None else tls_worker(pki, mutual)
    async with worker as w:
        cause = await asyncio.to_thread(diagnose, w.address, settings(pki, stranger))
    assert cause is not None and expected in cause, cause


async def test_matching_settings_have_nothing_to_report(pki):
    async with tls_worker(pki, mutual=True) as w:
        cause = await asyncio.to_thread(diagnose, w.address, TlsSettings(pki.ca, pki.client_cert, pki.client_key))
    assert cause is None


async def test_the_master_names_the_cause_long_before_its_connect_timeout(pki):
    async with tls_worker(pki, mutual=True) as w:
        tls = TlsSettings(pki.ca)  # no client certificate for a mutual-TLS worker
        started = time.monotonic()
        async with Cluster(
            [w.address],
            channel_credentials(pki.ca),
            timeouts=Timeouts(connect=60.0),
            diagnose=functools.partial(diagnose, tls=tls),
        ) as cluster:
            with pytest.raises(WorkersUnreachable, match="demands a client certificate"):
                await cluster.wait_healthy()
        assert time.monotonic() - started < 15


def test_a_party_is_told_why_the_server_refuses_its_tls(pki, tmp_path):
    x, y = load_breast_cancer(return_X_y=True)
    data = tmp_path / "party.npz"
    np.savez(data, x=x[:100], y=y[:100])
    (tmp_path / "token").write_text("a:not-checked-before-the-handshake\n")
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "aggregate",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-client-ca",
            str(pki.ca),
            "--parties",
            "2",
            "--run-id",
            "r",
            "--out",
            str(tmp_path / "srv"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        party = subprocess.run(
            [
                sys.executable,
                "-m",
                "cpml.dp.party_cli",
                "--server",
                port_file.read_text().strip(),
                "--data",
                str(data),
                "--tls-ca",
                str(pki.ca),
                "--run-id",
                "r",
                "--token-file",
                str(tmp_path / "token"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert party.returncode != 0
        assert "demands a client certificate" in party.stderr, party.stderr
    finally:
        server.kill()
        server.wait()
