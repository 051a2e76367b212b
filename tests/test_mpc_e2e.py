"""End to end with real cpml-worker processes on 127.0.0.1 port 0: `cpml-master train --protocol bgw|bh08`
trains the very model `--protocol cpml` trains at the same automatic precision (several residue primes),
and a baseline run resumes from its checkpoint (and refuses to resume as another protocol)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

COMMON = [
    "--dataset",
    "breast-cancer",
    "--workers-local",
    "9",
    "--seed",
    "5",
    "--log-format",
    "json",
    "--log-level",
    "warning",
]  # the default, automatic precision


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "cpml.master.cli", "train", *COMMON, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _weights(out: Path) -> list[float]:
    return json.loads((out / "model.json").read_text())["weights"]


def _plan(out: Path) -> dict:
    return json.loads((out / "model.json").read_text())["plan"]


def test_baselines_train_the_same_model_as_cpml_on_real_daemons_and_resume(tmp_path):
    # the paper's polynomial sigmoid: the model the baselines' parties evaluate
    _train(tmp_path / "cpml", "--protocol", "cpml", "--sigmoid", "polynomial", "--case", "2", "--iterations", "4")
    precision = {k: _plan(tmp_path / "cpml")[k] for k in ("p", "residues", "lx", "lw", "lc")}
    assert precision["residues"] >= 2
    for protocol in ("bgw", "bh08"):
        run = _train(tmp_path / protocol, "--protocol", protocol, "--iterations", "4")
        assert f"{protocol.upper()} in 3 groups of 2T+1, T=1" in run.stdout
        assert f"precision: {precision['residues']} residue primes" in run.stdout
        assert {k: _plan(tmp_path / protocol)[k] for k in precision} == precision  # the same precision
        assert _weights(tmp_path / protocol) == _weights(tmp_path / "cpml")  # bit-identical floats
        metrics = json.loads((tmp_path / protocol / "metrics.json").read_text())
        worker_to_worker = {"bgw": ("reshare",), "bh08": ("masked", "opened", "double")}[protocol]
        for kind in worker_to_worker:  # the workers really talked to each other over gRPC
            assert sum(w["messages_by_kind"].get(kind, 0) for w in metrics["workers"].values()) > 0
        assert (
            float(re.search(r"test accuracy: ([\d.]+)", run.stdout).group(1)) > 0.7
        )  # four rounds of a real model, not chance

    # Two rounds, then --resume to four: the same weights as the uninterrupted run.
    _train(tmp_path / "resumed", "--protocol", "bh08", "--iterations", "2")
    _train(tmp_path / "resumed", "--protocol", "bh08", "--iterations", "4", "--resume")
    assert _weights(tmp_path / "resumed") == _weights(tmp_path / "cpml")
    rounds = (tmp_path / "resumed" / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in rounds] == [1, 2, 3, 4]
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            *COMMON,
            "--out",
            str(tmp_path / "resumed"),
            "--protocol",
            "bgw",
            "--iterations",
            "5",
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert refused.returncode == 2
    assert "Argument 'protocol' must match the checkpoint's ('bh08') to resume, not 'bgw'." in refused.stderr


def test_a_baseline_reports_linear_regression_like_cpml(tmp_path):
    linear = ["--model", "linear", "--dataset", "diabetes", "--iterations", "3"]
    _train(tmp_path / "cpml", "--protocol", "cpml", "--case", "2", *linear)
    run = _train(tmp_path / "bgw", "--protocol", "bgw", *linear)
    assert _weights(tmp_path / "bgw") == _weights(tmp_path / "cpml")
    cpml, bgw = (json.loads((tmp_path / p / "metrics.json").read_text()) for p in ("cpml", "bgw"))
    for key in ("test_r2", "test_rmse"):  # R² and RMSE in the targets' units, round by round
        assert [r[key] for r in bgw["rounds"]] == [r[key] for r in cpml["rounds"]]
        assert all(r[key] is not None for r in bgw["rounds"])
    assert bgw["rounds"][-1]["test_rmse"] > 10  # diabetes targets are in the tens to hundreds, not standardised
    assert bgw["notes"] == cpml["notes"] and any(n.startswith("targets: ") for n in bgw["notes"])
    model = json.loads((tmp_path / "bgw" / "model.json").read_text())
    assert model["targets"] == json.loads((tmp_path / "cpml" / "model.json").read_text())["targets"]
    assert next(n for n in bgw["notes"] if n.startswith("targets: ")) in run.stdout


@pytest.mark.slow
def test_a_baseline_writes_the_model_artifact_predict_reads(tmp_path):
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    np.savez(tmp_path / "rows.npz", x=x, y=y)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            "--dataset",
            "breast-cancer",
            "--protocol",
            "bgw",
            "--workers-local",
            "9",
            "--iterations",
            "3",
            "--out",
            str(tmp_path / "bgw"),
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    scored = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "predict",
            "--model",
            str(tmp_path / "bgw" / "model.json"),
            "--data",
            str(tmp_path / "rows.npz"),
            "--out",
            str(tmp_path / "predictions.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scored.returncode == 0 and "accuracy:" in scored.stdout, scored.stderr
    assert json.loads((tmp_path / "bgw" / "model.json").read_text())["format"] == 2
