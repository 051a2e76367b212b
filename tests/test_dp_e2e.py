"""End to end: `cpml-master aggregate --listen` and three `cpml-party` processes on 127.0.0.1:0,
joining with the tokens the server generated; one party leaves mid-run (its own --max-epsilon)
and the server drops and renormalises it."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cpml.dp.accountant import Accounting, Budget, Step, calibrate_noise_multiplier, epsilon_spent
from cpml.errors import ExitCode

ROUNDS = 8
EPSILON = 2.0
SIZES = (60, 150, 240)


def write_party_files(tmp: Path) -> list[Path]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    order = np.random.default_rng(0).permutation(len(y))
    paths, start = [], 0
    for k, n in enumerate(SIZES):
        rows = order[start : start + n]
        start += n
        path = tmp / f"party{k}.csv"
        np.savetxt(path, np.column_stack([x[rows], y[rows]]), delimiter=",", fmt="%.6f")
        paths.append(path)
    return paths


def leave_after_three_rounds() -> float:
    """A --max-epsilon the smallest party crosses in its 4th round (the server's calibration)."""
    z = calibrate_noise_multiplier(Budget(EPSILON, 1e-5), ROUNDS, 1.0, Accounting.for_sampling(1.0))
    z_small = z * math.sqrt(SIZES[0] / sum(SIZES))
    three, four = (epsilon_spent({Step(z_small): r}, 1e-5, Accounting.for_sampling(1.0)) for r in (3, 4))
    return (three + four) / 2


@pytest.mark.slow
def test_server_and_party_processes_with_a_dropout(tmp_path):
    files = write_party_files(tmp_path)
    port_file = tmp_path / "port"
    out = tmp_path / "run"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "aggregate",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--port-file",
            str(port_file),
            "--parties",
            "3",
            "--rounds",
            str(ROUNDS),
            "--epsilon",
            str(EPSILON),
            "--round-timeout",
            "3",
            "--join-timeout",
            "60",
            "--run-id",
            "e2e",
            "--party-names",
            "party0,party1,party2",
            "--out",
            str(out),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "server never wrote its port file"
            time.sleep(0.1)
        address = port_file.read_text()
        assert address.startswith("127.0.0.1:")
        parties = []
        for k, path in enumerate(files):
            extra = ["--max-epsilon", f"{leave_after_three_rounds():.6f}"] if k == 0 else []
            parties.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cpml.dp.party_cli",
                        "--server",
                        address,
                        "--data",
                        str(path),
                        "--insecure",
                        "--run-id",
                        "e2e",
                        "--token-file",
                        str(out / "join-tokens" / f"party{k}"),
                        "--out",
                        str(tmp_path / f"model{k}.json"),
                        "--log-format",
                        "json",
                        *extra,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = [p.communicate(timeout=90) for p in parties]
        codes = [p.returncode for p in parties]
        server_out, server_err = server.communicate(timeout=60)
    finally:
        for proc in [server, *locals().get("parties", [])]:
            if proc.poll() is None:
                proc.kill()
    assert server.returncode == 0, server_err
    assert codes == [ExitCode.LEFT_EARLY, 0, 0], results
    assert "left after 3 rounds" in results[0][0]
    for stdout, _ in results[1:]:
        assert "released model: epsilon" in stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dropped"] == [{"party": "party0", "round": 4}]
    survivors = [h["survivors"] for h in metrics["history"]]
    assert survivors[:4] == [3, 3, 3, 2] and set(survivors[4:]) <= {2}
    # Fewer records after the dropout means less aggregate noise per round, so the budget may
    # stop the run before the planned rounds; it may never be overspent.
    assert metrics["guarantees"]["release_epsilon"] <= EPSILON
    assert metrics["rounds_run"] == ROUNDS or "would spend epsilon" in metrics["stop_reason"]
    assert "party_dropped" in server_err
    party_eps = metrics["guarantees"]["party_epsilons"]
    assert set(party_eps) == {"party0", "party1", "party2"}
    assert 0 < party_eps["party0"] <= leave_after_three_rounds()
    released = json.loads((tmp_path / "model1.json").read_text())["weights"]
    np.testing.assert_allclose(released, json.loads((out / "model.json").read_text())["weights"])
    assert (out / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_sigterm_ends_the_run_and_still_writes_the_report(tmp_path):
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "aggregate",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--port-file",
            str(port_file),
            "--parties",
            "2",
            "--out",
            str(tmp_path / "run"),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.communicate()
            time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 130, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stop_reason"] == "interrupted by SIGTERM"
    assert metrics["rounds_run"] == 0 and metrics["interrupted"]
