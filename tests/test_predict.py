"""`cpml-master predict` and `export` end to end: real cpml-master and cpml-worker processes, raw rows in."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from cpml.model import load_model, load_sklearn

CANCER = load_breast_cancer()
NAMES = [name.replace(" ", "_") for name in CANCER.feature_names]
LABELS = np.where(CANCER.target == 1, "benign", "malignant")
TRAIN, TEST = train_test_split(np.arange(len(LABELS)), test_size=0.25, random_state=4, stratify=LABELS)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpml.master.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _write(path, x, labels=None, names=NAMES, label_name="diagnosis"):
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        if names is not None:
            out.writerow([*names, *([label_name] if labels is not None else [])])
        for i, row in enumerate(x):
            out.writerow([*map(repr, map(float, row)), *([labels[i]] if labels is not None else [])])
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Breast cancer as two CSV files, trained by `cpml-master train --test-data` on 5 real worker processes."""
    tmp = tmp_path_factory.mktemp("predict")
    train = _write(tmp / "train.csv", CANCER.data[TRAIN], LABELS[TRAIN])
    test = _write(tmp / "test.csv", CANCER.data[TEST], LABELS[TEST])
    done = _cli(
        "train",
        "--dataset",
        train,
        "--test-data",
        test,
        "--workers-local",
        "5",
        "--iterations",
        "20",
        "--out",
        str(tmp / "run"),
        "--log-level",
        "error",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labels: benign -> 0, malignant -> 1" in done.stdout
    return tmp


def _predictions(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _final(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["final"]


@pytest.mark.slow
def test_predict_reproduces_the_runs_test_accuracy_from_the_raw_test_rows(run):
    done = _cli(
        "predict",
        "--model",
        str(run / "run" / "model.json"),
        "--data",
        str(run / "test.csv"),
        "--out",
        str(run / "predictions.csv"),
    )
    assert done.returncode == 0, done.stderr
    right, rows = map(
        int, re.search(r"accuracy: [\d.]+ \((\d+) of (\d+) rows\)   log-loss: [\d.]+", done.stdout).groups()
    )
    assert rows == len(TEST) and right / rows == _final(run / "run")["test_accuracy"]  # exactly the run's figure
    predictions = _predictions(run / "predictions.csv")
    assert len(predictions) == len(TEST) and set(predictions[0]) == {"label", "probability"}
    for row in predictions:  # the label is the class mapped to 1 exactly where its probability is >= 1/2
        assert (row["label"] == "malignant") == (float(row["probability"]) >= 0.5)
    assert sum(p["label"] == t for p, t in zip(predictions, LABELS[TEST])) == right
    model = json.loads((run / "run" / "model.json").read_text())
    assert model["format"] == 2 and model["model"] == "logistic"
    assert model["preprocessing"]["labels"] == {"0": "benign", "1": "malignant"}
    assert model["preprocessing"]["features"]["names"] == NAMES
    assert model["privacy"]["colluding_workers_tolerated"] == model["plan"]["t"] == 1
    assert model["metrics"]["test_accuracy"] == right / rows


@pytest.mark.slow
def test_rows_without_labels_are_predicted_alike_and_not_scored(run):
    unlabelled = _write(run / "unlabelled.csv", CANCER.data[TEST])
    done = _cli("predict", "--model", str(run / "run" / "model.json"), "--data", unlabelled, "--out", "-")
    assert done.returncode == 0, done.stderr
    assert "accuracy" not in done.stdout + done.stderr
    rows = list(csv.DictReader(done.stdout.splitlines()))
    labelled = _cli(
        "predict",
        "--model",
        str(run / "run" / "model.json"),
        "--data",
        str(run / "test.csv"),
        "--out",
        str(run / "again.csv"),
    )
    assert labelled.returncode == 0 and rows == _predictions(run / "again.csv")


@pytest.mark.slow
def test_the_exported_scikit_learn_pipeline_gives_the_same_predictions(run):
    done = _cli("export", "--model", str(run / "run" / "model.json"), "--out", str(run / "model.skops"))
    assert done.returncode == 0, done.stderr
    assert "prescale -> scale -> model" in done.stdout
    pipeline = load_sklearn(run / "model.skops")
    x = CANCER.data[TEST]
    ours = _cli(
        "predict",
        "--model",
        str(run / "run" / "model.json"),
        "--data",
        str(run / "test.csv"),
        "--out",
        str(run / "ours.csv"),
    )
    assert ours.returncode == 0
    predictions = _predictions(run / "ours.csv")
    assert list(pipeline.predict(x)) == [p["label"] for p in predictions]
    np.testing.assert_allclose(
        pipeline.predict_proba(x)[:, 1], [float(p["probability"]) for p in predictions], rtol=1e-12
    )
    assert pipeline.score(x, LABELS[TEST]) == _final(run / "run")["test_accuracy"]
    coefficients = pipeline[-1].coef_[0]
    assert coefficients.tolist() == load_model(run / "run" / "model.json").weights[:-1].tolist()


@pytest.mark.slow
def test_rows_that_do_not_match_the_models_schema_are_refused_naming_the_column(run):
    names = [name if name != "worst_area" else "worst_areas" for name in NAMES]
    renamed = _write(run / "renamed.csv", CANCER.data[TEST], LABELS[TEST], names=names)
    done = _cli(
        "predict", "--model", str(run / "run" / "model.json"), "--data", renamed, "--out", str(run / "never.csv")
    )
    assert done.returncode == 2 and not (run / "never.csv").exists()
    assert done.stderr.strip() == (
        "cpml-master predict: Argument 'data' must have the model's feature column 'worst_area', not "
        "'renamed.csv' without it (1 of the model's 30 feature columns missing; 1 column(s) the model does not "
        "read, such as 'worst_areas')."
    )
    short = _write(run / "short.csv", CANCER.data[TEST][:, :29], names=None)
    done = _cli("predict", "--model", str(run / "run" / "model.json"), "--data", short)
    assert done.returncode == 2 and done.stderr.strip() == (
        "cpml-master predict: Argument 'data' must have the model's 30 feature columns (31 with the label), not 29 "
        "columns on line 1 of 'short.csv'."
    )


@pytest.mark.slow
def test_predict_reproduces_a_split_runs_test_accuracy_and_linear_metrics(tmp_path):
    done = _cli(
        "train",
        "--dataset",
        "breast-cancer",
        "--workers-local",
        "4",
        "--iterations",
        "8",
        "--seed",
        "2",
        "--out",
        str(tmp_path / "split"),
        "--log-level",
        "error",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, x_test, _, y_test = train_test_split(
        CANCER.data, CANCER.target, test_size=0.2, random_state=2, stratify=CANCER.target
    )  # the split cpml-master train makes
    rows = _write(tmp_path / "rows.csv", x_test, y_test, names=None)  # bundled data: columns by position
    done = _cli("predict", "--model", str(tmp_path / "split" / "model.json"), "--data", rows, "--out", "-")
    assert done.returncode == 0, done.stderr
    right, n = map(int, re.search(r"\((\d+) of (\d+) rows\)", done.stderr).groups())
    assert right / n == _final(tmp_path / "split")["test_accuracy"]

    diabetes = load_diabetes()
    train, test = np.arange(0, 350), np.arange(350, len(diabetes.target))
    names = list(diabetes.feature_names)
    _write(tmp_path / "d_train.csv", diabetes.data[train], diabetes.target[train], names=names, label_name="y")
    _write(tmp_path / "d_test.csv", diabetes.data[test], diabetes.target[test], names=names, label_name="y")
    done = _cli(
        "train",
        "--dataset",
        str(tmp_path / "d_train.csv"),
        "--test-data",
        str(tmp_path / "d_test.csv"),
        "--model",
        "linear",
        "--workers-local",
        "4",
        "--iterations",
        "30",
        "--out",
        str(tmp_path / "lin"),
        "--log-level",
        "error",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = _final(tmp_path / "lin")
    done = _cli(
        "predict",
        "--model",
        str(tmp_path / "lin" / "model.json"),
        "--data",
        str(tmp_path / "d_test.csv"),
        "--out",
        str(tmp_path / "lin.csv"),
    )
    assert done.returncode == 0, done.stderr
    r2, rmse = map(float, re.search(r"R²: ([\d.-]+)   RMSE: ([\d.]+)", done.stdout).groups())
    assert r2 == round(final["test_r2"], 4) and rmse == pytest.approx(final["test_rmse"], rel=1e-3)
    assert len(_predictions(tmp_path / "lin.csv")) == len(test)


def test_train_refuses_test_rows_labelled_with_a_class_it_does_not_know(tmp_path):
    train = _write(tmp_path / "train.csv", CANCER.data[TRAIN], LABELS[TRAIN])
    labels = LABELS[TEST].copy()
    labels[3] = "unsure"
    test = _write(tmp_path / "test.csv", CANCER.data[TEST], labels)
    done = _cli(
        "train", "--dataset", train, "--test-data", test, "--out", str(tmp_path / "run"), "--log-level", "error"
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "cpml-master train: Argument 'test_data' must hold only the model's labels (benign, malignant), not 'unsure' "
        "in column 31 ('diagnosis') of 'test.csv', row 4 (1 such row(s))."
    )


@pytest.mark.slow
def test_aggregate_scores_an_embedded_run_on_a_held_out_file(tmp_path):
    train = _write(tmp_path / "train.csv", CANCER.data[TRAIN], LABELS[TRAIN])
    test = _write(tmp_path / "test.csv", CANCER.data[TEST], LABELS[TEST])
    done = _cli(
        "aggregate",
        "--dataset",
        train,
        "--test-data",
        test,
        "--parties",
        "3",
        "--rounds",
        "6",
        "--out",
        str(tmp_path / "run"),
        "--log-level",
        "error",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        metrics["notes"][0]
        == f"train: {len(TRAIN)} rows x 30 features, all for training; {len(TEST)} test rows from {test}"
    )
    assert f"test accuracy: {metrics['history'][-1]['test_accuracy']:.4f}" in done.stdout
    assert metrics["history"][-1]["test_accuracy"] > 0.85


def _wait_for(path, process, seconds=30.0):
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return path.read_text()


@pytest.mark.slow
def test_a_remote_aggregation_reports_accuracy_on_a_server_side_test_file(tmp_path):
    # The parties' rows are scaled by a public map (here: fixed constants); cpml-party does not scale them further,
    # and the server reads its test file the same way, so what it scores is what the parties trained on.
    x = (CANCER.data - CANCER.data.mean(axis=0)) / CANCER.data.std(axis=0)
    y = CANCER.target
    halves = np.array_split(TRAIN, 2)
    files = [_write(tmp_path / f"party{k}.csv", x[rows], y[rows], names=None) for k, rows in enumerate(halves)]
    test = _write(tmp_path / "test.csv", x[TEST], y[TEST], names=None)
    port_file, out = tmp_path / "port", tmp_path / "run"
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
            "--rounds",
            "5",
            "--run-id",
            "held-out",
            "--party-names",
            "a,b",
            "--test-data",
            test,
            "--out",
            str(out),
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    parties = []
    try:
        address = _wait_for(port_file, server)
        parties = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cpml.dp.party_cli",
                    "--server",
                    address,
                    "--data",
                    path,
                    "--insecure",
                    "--run-id",
                    "held-out",
                    "--token-file",
                    str(out / "join-tokens" / name),
                    "--out",
                    str(tmp_path / f"model-{name}.json"),
                    "--log-level",
                    "error",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, path in zip("ab", files)
        ]
        results = [p.communicate(timeout=120) for p in parties]
        stdout, stderr = server.communicate(timeout=60)
    finally:
        for process in [server, *parties]:
            if process.poll() is None:
                process.kill()
    assert server.returncode == 0 and [p.returncode for p in parties] == [0, 0], (stderr, results)
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["history"][-1]["test_accuracy"]
    assert f"test accuracy: {final:.4f}" in stdout and final > 0.85
    assert f"test rows: {len(TEST)} from {test}, read on this server as the parties read theirs" in metrics["notes"]


def test_a_remote_aggregation_refuses_a_test_file_it_cannot_scale_as_the_parties_do(tmp_path):
    test = _write(tmp_path / "test.csv", CANCER.data[TEST], CANCER.target[TEST], names=None)
    done = _cli(
        "aggregate",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
        "--parties",
        "2",
        "--scaling",
        "standard",
        "--test-data",
        test,
        "--out",
        str(tmp_path / "run"),
        "--log-level",
        "error",
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "cpml-master aggregate: Argument 'test_data' with --listen needs the parties' public scaling, "
        "--feature-bounds FILE or none, not --scaling standard: each party would scale with its own statistics, "
        "which this server cannot repeat."
    )
