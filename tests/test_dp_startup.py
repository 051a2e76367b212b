"""Start-up and accounting faults of WD-DP (issue 11 item 9), with real processes on 127.0.0.1:

- a server whose parties fail at start-up says who has joined and who is awaited, not 600 s of silence;
- raw data with one feature 10^5 x the others: the party warns, and a public schema of feature bounds
  shared by the server and every party (checked at Join) scales it inside the guarantee;
- Poisson sampling no longer prints dp_accounting's 'failed to converge' warnings;
- full batches are accounted with PLD (replace-one), which needs less noise than RDP.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from structlog.testing import capture_logs
from test_dp_auth import aggregation_server, finish_parties, start_party, write_party_data

from cpml.dp.accountant import Accounting, Budget, calibrate_noise_multiplier
from cpml.dp.dpgd import LocalSettings
from cpml.dp.features import dominant_feature, read_feature_bounds
from cpml.dp.party_cli import load_party_data
from cpml.dp.server import Coordinator, JoinTimeout
from cpml.dp.session import AggregationSession, RunSettings
from cpml.errors import ExitCode

SCHEMA = {
    "features": [
        {"name": "sensor", "min": -4e5, "max": 4e5},
        {"name": "a", "min": -4, "max": 4},
        {"name": "b", "min": -4, "max": 4},
    ]
}


def write_raw_parties(tmp, sizes=(300, 500)):
    """Raw rows: an irrelevant column of scale 10^5 and two unit-scale columns that decide the label."""
    rng = np.random.default_rng(1)
    paths = []
    for k, n in enumerate(sizes):
        x = np.column_stack([rng.normal(0, 1e5, n), rng.normal(size=n), rng.normal(size=n)])
        y = (x[:, 1] - 0.5 * x[:, 2] > 0.5).astype(int)
        paths.append(tmp / f"raw{k}.csv")
        np.savetxt(paths[-1], np.column_stack([x, y]), delimiter=",", fmt="%.6g")
    return paths


@pytest.mark.slow
def test_a_waiting_server_says_who_joined_and_who_is_awaited(tmp_path):
    # Fault: when parties failed at start-up the server waited the whole join timeout in silence.
    data = write_party_data(tmp_path, (100, 160))
    tokens = tmp_path / "tokens"
    tokens.write_text("hospital-a:" + "a" * 32 + "\nhospital-b:" + "b" * 32 + "\n")
    (tmp_path / "a.token").write_text("hospital-a:" + "a" * 32 + "\n")
    (tmp_path / "b.token").write_text("hospital-b:" + "c" * 32 + "\n")  # a wrong token
    (tmp_path / "waiting").mkdir()
    with aggregation_server(
        tmp_path / "waiting", "--insecure", "--party-tokens", str(tokens), "--run-id", "s", "--join-timeout", "120"
    ) as server:
        server.wait_for_log("joined 0 of 2; awaiting hospital-a, hospital-b")
        parties = [
            start_party(
                server.address, data[0], "--insecure", "--run-id", "s", "--token-file", str(tmp_path / "a.token")
            ),
            start_party(
                server.address, data[1], "--insecure", "--run-id", "s", "--token-file", str(tmp_path / "b.token")
            ),
        ]
        # Long before the timeout, the log says who is there and who is missing, and why b is missing.
        server.wait_for_log("joined 1 of 2 (hospital-a); awaiting hospital-b", timeout=60)
        server.wait_for_log("Join as party 'hospital-b' must carry that party's join token", timeout=60)
        b_code, _, b_err = finish_parties(parties[1:])[0]
        assert b_code == ExitCode.REFUSED and "UNAUTHENTICATED" in b_err  # b's own output says so too
        server.proc.send_signal(signal.SIGTERM)
        assert server.finish() == 130
        finish_parties(parties[:1])
    # Nobody came: at the timeout the server names whom it waited for, and exits 4.
    (tmp_path / "alone").mkdir()
    with aggregation_server(
        tmp_path / "alone", "--insecure", "--party-tokens", str(tokens), "--run-id", "s", "--join-timeout", "2"
    ) as server:
        assert server.finish() == ExitCode.PARTIES_MISSING
    assert "did not join within 2 s (joined 0 of 2; awaiting hospital-a, hospital-b)" in server.log().splitlines()[-1]


async def test_the_wait_for_parties_is_reported_every_status_interval():
    settings = RunSettings("s", 2, 2, Budget(1.0, 1e-5), LocalSettings(learning_rate=1.0))
    coordinator = Coordinator(
        AggregationSession(settings, 3), 5.0, join_timeout=0.5, roster=["a", "b"], status_interval=0.1
    )
    with capture_logs() as logs, pytest.raises(JoinTimeout, match=r"within 0.5 s \(joined 0 of 2; awaiting a, b\)"):
        await coordinator.run()
    waits = [e for e in logs if e["event"] == "waiting_for_parties"]
    assert len(waits) >= 4
    assert all(e["status"] == "joined 0 of 2; awaiting a, b" for e in waits)


@pytest.mark.slow
def test_raw_data_is_flagged_and_the_shared_feature_bounds_make_it_learnable(tmp_path):
    # Fault: --scaling none on raw data (one column 10^5 x the others) silently trained a majority-class
    # model. Now the party warns, and the public bounds every party shares scale it inside the guarantee.
    raw = write_raw_parties(tmp_path)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"features": [*SCHEMA["features"][:2], {"name": "b", "min": -8, "max": 8}]}))
    model = tmp_path / "model.json"
    with aggregation_server(
        tmp_path,
        "--insecure",
        "--party-names",
        "a,b",
        "--run-id",
        "f",
        "--rounds",
        "10",
        "--epsilon",
        "8",
        "--feature-bounds",
        str(schema),
        "--join-timeout",
        "60",
    ) as server:
        tokens = server.out / "join-tokens"
        unscaled = start_party(
            server.address,
            raw[0],
            "--insecure",
            "--run-id",
            "f",
            "--scaling",
            "none",
            "--token-file",
            str(tokens / "a"),
        )
        misfit = start_party(
            server.address,
            raw[0],
            "--insecure",
            "--run-id",
            "f",
            "--feature-bounds",
            str(other),
            "--token-file",
            str(tokens / "a"),
        )
        (code, _, err), (misfit_code, _, misfit_err) = finish_parties([unscaled, misfit])
        assert "feature column 0 carries 100.0% of the rows' squared norms" in err
        assert "--feature-bounds FILE" in err
        assert code == ExitCode.REFUSED and "FAILED_PRECONDITION" in err and "uses the schema" in err
        assert misfit_code == ExitCode.REFUSED and "with another schema" in misfit_err
        parties = [
            start_party(
                server.address,
                path,
                "--insecure",
                "--run-id",
                "f",
                "--feature-bounds",
                str(schema),
                "--token-file",
                str(tokens / name),
                "--out",
                str(model),
            )
            for name, path in zip("ab", raw)
        ]
        results = finish_parties(parties)
        assert [c for c, _, _ in results] == [0, 0], results
        assert not any("squared norms" in e for _, _, e in results)  # in bounds: no warning
        assert server.finish() == 0, server.log()
    weights = np.asarray(json.loads(model.read_text())["weights"])
    x, y = load_party_data(str(raw[1]), "auto", -1, "none", bounds=read_feature_bounds(schema))
    majority = max(y.mean(), 1 - y.mean())
    assert np.mean((x @ weights > 0) == y) > majority + 0.2  # measured 0.97 against 0.66
    metrics = json.loads((server.out / "metrics.json").read_text())
    assert any("public feature bounds" in note for note in metrics["notes"])


def test_dominant_feature_needs_most_of_the_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    assert dominant_feature(x) is None
    x[:, 2] *= 1e5
    column, share = dominant_feature(x)
    assert column == 2 and share > 0.99
    assert dominant_feature(x[:, :1]) is None  # one feature has nothing to crowd out


@pytest.mark.slow
def test_poisson_sampling_prints_no_dp_accounting_warnings(tmp_path):
    # Fault: every Poisson-sampled run printed 26 absl 'failed to converge' warnings (the RDP rough guess
    # for the PLD calibration dropping fractional orders, harmless).
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "aggregate",
            "--parties",
            "2",
            "--rho",
            "1",
            "--rounds",
            "3",
            "--sampling-rate",
            "0.5",
            "--out",
            str(tmp_path / "run"),
            "--log-level",
            "warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "failed to converge" not in run.stderr
    assert "absl" not in run.stderr


def test_the_default_run_is_calibrated_with_pld(tmp_path):
    from cpml.master.cli import main

    assert (
        main(
            [
                "aggregate",
                "--parties",
                "2",
                "--rho",
                "1",
                "--rounds",
                "5",
                "--out",
                str(tmp_path),
                "--log-level",
                "error",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    budget = Budget(1.0, 1e-5)
    assert metrics["settings"]["accountant"] == "pld"
    pld = calibrate_noise_multiplier(budget, 5, 1.0, Accounting.PLD)
    rdp = calibrate_noise_multiplier(budget, 5, 1.0, Accounting.RDP)
    assert metrics["noise_multiplier"] == pytest.approx(pld)
    assert metrics["noise_multiplier"] < 0.95 * rdp
    assert metrics["guarantees"]["release_epsilon"] <= 1.0
