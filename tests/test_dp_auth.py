"""Parties prove who they are (issue 11 item 8): join tokens or the client certificate's identity.

Real `cpml-master aggregate --listen 127.0.0.1:0` and `cpml-party` processes: made-up joins are refused
(UNAUTHENTICATED, or PERMISSION_DENIED for a certificate naming someone else) and the real parties still
run; a listening server has no open default run id. The helpers here are shared with test_dp_startup.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from structlog.testing import capture_logs

from cpml.dp.accountant import Budget
from cpml.dp.auth import (
    CertificateAdmission,
    TokenAdmission,
    Unauthenticated,
    read_party_token,
    read_token_file,
    write_tokens,
)
from cpml.dp.dpgd import LocalSettings
from cpml.dp.party_cli import main as party_main
from cpml.dp.server import AggregationServer, Coordinator
from cpml.dp.session import AggregationSession, RunSettings
from cpml.errors import ExitCode
from cpml.wire.certs import make_cluster_pki
from cpml.wire.generated.v1 import aggregation_pb2 as pb
from cpml.wire.generated.v1 import aggregation_pb2_grpc as pb_grpc
from cpml.wire.tls import channel_credentials, server_credentials

RUN_ID_LINE = re.compile(r"run id: (wddp-[0-9a-f]{8})")


@dataclass
class Server:
    """A running `cpml-master aggregate --listen` process and where its output goes."""

    proc: subprocess.Popen
    address: str
    out: Path
    stdout: Path
    stderr: Path

    def printed(self) -> str:
        """What the server printed so far."""
        return self.stdout.read_text()

    def log(self) -> str:
        """What the server logged so far."""
        return self.stderr.read_text()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """Wait until `text` appears in the log (fails the test if it never does)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log()}"
            time.sleep(0.1)
        return self.log()

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the server to exit; its exit code."""
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def aggregation_server(tmp: Path, *flags: str) -> Iterator[Server]:
    """Start `cpml-master aggregate --listen 127.0.0.1:0 ... --out tmp/run`, yield once it serves."""
    port_file, out = tmp / "port", tmp / "run"
    stdout, stderr = tmp / "server.out", tmp / "server.err"
    with stdout.open("w") as o, stderr.open("w") as e:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cpml.master.cli",
                "aggregate",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--out",
                str(out),
                "--log-format",
                "json",
                *flags,
            ],
            stdout=o,
            stderr=e,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the server never wrote its port file"
            time.sleep(0.1)
        yield Server(proc, port_file.read_text(), out, stdout, stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_party(address: str, data: Path, *flags: str) -> subprocess.Popen:
    """A `cpml-party` process (stdout and stderr captured)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpml.dp.party_cli",
            "--server",
            address,
            "--data",
            str(data),
            "--log-format",
            "json",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_parties(parties: list[subprocess.Popen], timeout: float = 90.0) -> list[tuple[int, str, str]]:
    """Wait for every party; (exit code, stdout, stderr) each."""
    results = []
    try:
        for proc in parties:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in parties:
            if proc.poll() is None:
                proc.kill()
    return results


def write_party_data(tmp: Path, sizes: tuple[int, ...] = (100, 160, 200)) -> list[Path]:
    """Standardised breast-cancer rows split into one CSV per party."""
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    order = np.random.default_rng(0).permutation(len(y))
    paths, start = [], 0
    for k, n in enumerate(sizes):
        rows = order[start : start + n]
        start += n
        paths.append(tmp / f"party{k}.csv")
        np.savetxt(paths[-1], np.column_stack([x[rows], y[rows]]), delimiter=",", fmt="%.6f")
    return paths


async def _join(
    address: str, name: str, run_id: str, token: str = "", credentials: grpc.ChannelCredentials | None = None
) -> grpc.StatusCode:
    channel = grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    async with channel:
        try:
            await pb_grpc.AggregationStub(channel).Join(
                pb.JoinRequest(run_id=run_id, name=name, records=50, dimension=31, token=token), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def join(address: str, name: str, run_id: str, token: str = "", credentials=None) -> grpc.StatusCode:
    """One Join from outside (an impostor's); its status code."""
    return asyncio.run(_join(address, name, run_id, token, credentials))


@pytest.mark.slow
def test_made_up_joins_are_unauthenticated_and_the_real_parties_still_run(tmp_path):
    # Fault: three joins with made-up names under the default run id took every slot of a listening
    # server, the real parties were refused and the run died.
    files = write_party_data(tmp_path)
    with aggregation_server(
        tmp_path, "--insecure", "--parties", "3", "--rounds", "2", "--join-timeout", "60"
    ) as server:
        run_id = RUN_ID_LINE.search(server.printed()).group(1)  # no open default run id: a random one
        for k in range(3):  # the attack of the issue: the old default run id, made-up names, no token
            assert join(server.address, f"intruder{k}", "wddp") == grpc.StatusCode.UNAUTHENTICATED
        # ... nor does knowing the run id and a party's name help, nor a made-up token
        assert join(server.address, "party-1", run_id) == grpc.StatusCode.UNAUTHENTICATED
        assert join(server.address, "party-1", run_id, "x" * 43) == grpc.StatusCode.UNAUTHENTICATED
        folder = server.out / "join-tokens"
        parties = [
            start_party(
                server.address, path, "--insecure", "--run-id", run_id, "--token-file", str(folder / f"party-{k + 1}")
            )
            for k, path in enumerate(files)
        ]
        results = finish_parties(parties)
        assert [code for code, _, _ in results] == [0, 0, 0], results
        assert server.finish() == 0, server.log()
    metrics = json.loads((server.out / "metrics.json").read_text())
    assert sorted(p["name"] for p in metrics["parties"]) == ["party-1", "party-2", "party-3"]
    assert "join_refused" in server.log()
    # The tokens are private files, printed by path only, and never logged by anyone.
    tokens = read_token_file(server.out / "party-tokens")
    for path in [server.out / "party-tokens", *folder.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "join tokens: " in server.printed()
    seen = server.printed() + server.log() + "".join(out + err for _, out, err in results)
    assert not any(token in seen for token in tokens.values())


@pytest.mark.slow
def test_with_mutual_tls_a_party_is_its_certificate(tmp_path):
    pki = make_cluster_pki(tmp_path / "pki", ["127.0.0.1"], ["alice", "bob", "mallory"])
    files = write_party_data(tmp_path, (120, 200))

    def cert(name: str) -> grpc.ChannelCredentials:
        return channel_credentials(pki.ca, *pki.clients[name])

    with aggregation_server(
        tmp_path,
        "--tls-cert",
        str(pki.worker_cert),
        "--tls-key",
        str(pki.worker_key),
        "--tls-client-ca",
        str(pki.ca),
        "--party-names",
        "alice,bob",
        "--run-id",
        "m",
        "--rounds",
        "2",
        "--join-timeout",
        "60",
    ) as server:
        assert join(server.address, "alice", "m", credentials=cert("bob")) == grpc.StatusCode.PERMISSION_DENIED
        assert join(server.address, "alice", "m", credentials=cert("mallory")) == grpc.StatusCode.PERMISSION_DENIED
        # a certificate of the CA, but not one of the run's parties
        assert join(server.address, "mallory", "m", credentials=cert("mallory")) == grpc.StatusCode.PERMISSION_DENIED
        no_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        assert join(server.address, "alice", "m", credentials=no_cert) == grpc.StatusCode.UNAVAILABLE
        parties = [
            start_party(
                server.address,
                path,
                "--run-id",
                "m",
                "--tls-ca",
                str(pki.ca),
                "--tls-cert",
                str(pki.clients[name][0]),
                "--tls-key",
                str(pki.clients[name][1]),
            )
            for name, path in zip(("alice", "bob"), files)
        ]  # no --name: the certificate's CN
        results = finish_parties(parties)
        assert [code for code, _, _ in results] == [0, 0], results
        assert server.finish() == 0, server.log()
    metrics = json.loads((server.out / "metrics.json").read_text())
    assert sorted(p["name"] for p in metrics["parties"]) == ["alice", "bob"]
    assert not (server.out / "party-tokens").exists()


async def test_with_mutual_tls_no_party_can_act_for_another(tmp_path):
    pki = make_cluster_pki(tmp_path / "pki", ["127.0.0.1"], ["alice", "bob"])
    settings = RunSettings("m", 2, 2, Budget(1.0, 1e-5), LocalSettings(learning_rate=1.0))
    coordinator = Coordinator(AggregationSession(settings, 3), 5.0, 10.0)
    server = AggregationServer(
        coordinator, "127.0.0.1:0", server_credentials(pki.worker_cert, pki.worker_key, pki.ca), CertificateAdmission()
    )
    address = await server.start()
    driver = asyncio.create_task(coordinator.run())
    try:
        channels = {
            name: grpc.aio.secure_channel(address, channel_credentials(pki.ca, *pki.clients[name]))
            for name in ("alice", "bob")
        }
        stubs = {name: pb_grpc.AggregationStub(channel) for name, channel in channels.items()}
        ids = {}
        for name in ("alice", "bob"):  # an empty name is the certificate's
            reply = await stubs[name].Join(pb.JoinRequest(run_id="m", records=10, dimension=3), timeout=5)
            ids[name] = reply.party_id
        assert coordinator.session.joined_names() == ["alice", "bob"]
        with pytest.raises(grpc.aio.AioRpcError) as err:  # bob holding alice's party id
            await stubs["bob"].NextTask(pb.TaskRequest(run_id="m", party_id=ids["alice"]), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        task = await stubs["alice"].NextTask(pb.TaskRequest(run_id="m", party_id=ids["alice"]), timeout=5)
        assert task.round == 1
        for channel in channels.values():
            await channel.close()
    finally:
        driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driver
        await server.stop(0)


def test_token_admission_compares_in_constant_time_and_never_logs_the_token(monkeypatch):
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    admission = TokenAdmission({"alice": "A" * 32, "bob": "B" * 32})
    assert admission.admit("alice", "A" * 32, None) == "alice"
    with capture_logs() as logs:
        for name, token in [("alice", "B" * 32), ("alice", ""), ("carol", "A" * 32), ("", "")]:
            with pytest.raises(Unauthenticated, match="must carry that party's join token") as err:
                admission.admit(name, token, None)
            assert "A" * 16 not in str(err.value) and "B" * 16 not in str(err.value)
    assert len(compared) == 5  # one comparison per Join, known name or not
    assert "A" * 16 not in repr(logs) and "B" * 16 not in repr(logs)


def test_token_files_are_read_strictly_and_written_private(tmp_path):
    path, folder = write_tokens(tmp_path, {"alice": "a" * 20, "bob": "b" * 20})
    assert read_token_file(path) == {"alice": "a" * 20, "bob": "b" * 20}
    assert read_party_token(folder / "bob") == ("bob", "b" * 20)
    assert stat.S_IMODE(os.stat(folder / "bob").st_mode) == 0o600
    bare = tmp_path / "bare"
    bare.write_text("# my token\n" + "t" * 30 + "\n")
    assert read_party_token(bare) == (None, "t" * 30)
    cases = [
        ("alice:short\n", "Argument 'party_tokens' must give the token of 'alice'"),
        ("alice:" + "a" * 20 + "\nalice:" + "b" * 20 + "\n", "must list each party once"),
        ("a" * 40 + "\n", 'must hold name:token lines, not "line 1 of'),
        ("bad name:" + "a" * 20 + "\n", "must name parties with letters, digits"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            read_token_file(path)
        assert "a" * 20 not in str(err.value)
    path.write_text("alice:" + "a" * 20 + "\nbob:" + "b" * 20 + "\n")
    with pytest.raises(ValueError, match="must hold this party's token alone"):
        read_party_token(path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--run-id", "r"], "Argument 'token_file' must give this party's join token"),
        (
            ["--run-id", "r", "--token-file", "{tmp}/alice", "--name", "bob"],
            "Argument 'name' must be the name its token was issued to ('alice'), not 'bob'.",
        ),
        (["--token-file", "{tmp}/alice"], "Argument 'run_id' must name the run to join"),
    ],
)
def test_party_cannot_start_without_proving_who_it_is(tmp_path, capsys, flags, message):
    data = write_party_data(tmp_path, (30,))[0]
    (tmp_path / "alice").write_text("alice:" + "a" * 20 + "\n")
    argv = [
        "--server",
        "127.0.0.1:1",
        "--data",
        str(data),
        "--insecure",
        "--log-level",
        "error",
        *(f.format(tmp=tmp_path) for f in flags),
    ]
    assert party_main(argv) == ExitCode.USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--insecure", "--party-tokens", "{tmp}/tokens", "--parties", "3"],
            "Argument 'party_tokens' must name at least --parties (3) parties, not 2 in",
        ),
        (
            [
                "--tls-cert",
                "{tmp}/c",
                "--tls-key",
                "{tmp}/k",
                "--tls-client-ca",
                "{tmp}/ca",
                "--party-tokens",
                "{tmp}/tokens",
            ],
            "Argument 'party_tokens' must not come with --tls-client-ca",
        ),
        (
            ["--insecure", "--party-tokens", "{tmp}/tokens", "--party-names", "a,b"],
            "Argument 'party_names' must not come with --party-tokens",
        ),
        (["--insecure", "--party-names", "a b,c"], "Argument 'party_names' must name parties with letters"),
    ],
)
def test_listening_server_refuses_unclear_authentication(tmp_path, capsys, flags, message):
    from cpml.master.cli import main

    (tmp_path / "tokens").write_text("alice:" + "a" * 20 + "\nbob:" + "b" * 20 + "\n")
    for name in ("c", "k", "ca"):
        (tmp_path / name).write_text("")
    code = main(
        [
            "aggregate",
            "--listen",
            "127.0.0.1:0",
            "--out",
            str(tmp_path / "run"),
            "--log-level",
            "error",
            *(f.format(tmp=tmp_path) for f in flags),
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_restarted_listening_server_keeps_its_tokens_and_a_resumed_one_its_run_id(tmp_path, capsys):
    import argparse

    from cpml.dp import aggregate_cli
    from cpml.dp.settings import aggregate_settings

    def prepared(*flags: str):
        parser = argparse.ArgumentParser()
        aggregate_cli.add_arguments(parser)
        settings = aggregate_settings(
            parser.parse_args(["--listen", "127.0.0.1:0", "--insecure", "--out", str(tmp_path), *flags])
        )
        run_settings = aggregate_cli._prepare(settings).run_settings
        return run_settings, aggregate_cli._access(settings, run_settings, None)

    settings, access = prepared("--party-names", "a,b")
    assert settings.parties == 2 and re.fullmatch(r"wddp-[0-9a-f]{8}", settings.run_id)
    assert access.admission.roster == ("a", "b") and "generated, mode 0600" in access.printed[1]
    first = read_token_file(tmp_path / "party-tokens")
    again, access = prepared()  # restarted: same tokens (the parties keep their files), a new run id
    assert read_token_file(tmp_path / "party-tokens") == first and "reused" in access.printed[1]
    assert again.parties == 2 and again.run_id != settings.run_id
    (tmp_path / "checkpoint.json").write_text(json.dumps({"session": {"run_id": "wddp-0000beef"}, "history": []}))
    resumed, access = prepared("--resume")
    assert resumed.run_id == "wddp-0000beef" and access.printed[0].startswith("run id: wddp-0000beef")
    with pytest.raises(ValueError, match="must match the parties of"):
        prepared("--party-names", "a,c")
