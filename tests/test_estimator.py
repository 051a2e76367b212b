"""The scikit-learn estimators: scikit-learn's own checks, Pipeline, clone, cross_val_score, remote daemons over
mutual TLS, and the command line's weights bit for bit."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers_cluster import make_pki
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.feature_selection import SelectKBest
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import cpml
from cpml.errors import ExitCode
from cpml.estimator import CodedLinearRegression, CodedLogisticRegression, WDDPLogisticRegression
from cpml.master import cli
from cpml.master.local import LocalWorkers
from cpml.model import load_model

X, Y = load_breast_cancer(return_X_y=True)
TEXT = np.where(Y == 1, "benign", "malignant")


@parametrize_with_checks(
    [
        CodedLogisticRegression(workers="in-process"),
        CodedLinearRegression(workers="in-process"),
        WDDPLogisticRegression(),
    ]
)
def test_scikit_learn_estimator_checks(estimator, check):
    # In process: the same trainer as on workers (bit-identical weights), ~100 fits in seconds. Checks that do
    # not apply are skipped by scikit-learn itself and listed in the README.
    check(estimator)


def test_the_estimators_are_importable_from_cpml_and_clone_with_their_parameters():
    assert cpml.CodedLogisticRegression is CodedLogisticRegression
    assert cpml.CodedLinearRegression is CodedLinearRegression
    est = cpml.CodedLogisticRegression(n_workers=7, case=2, iterations=12, random_state=5, workers="in-process")
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert twin.set_params(iterations=3).iterations == 3 and est.iterations == 12
    assert "r" not in CodedLinearRegression().get_params()  # linear regression's gradient is exact: no sigmoid


def test_fit_refuses_what_it_cannot_train_with_the_reason():
    with pytest.raises(ValueError, match=r"Argument 'y' must hold at least 2 classes, not 1 class\(es\): \[7\]\."):
        CodedLogisticRegression(workers="in-process").fit(X[:30], np.full(30, 7))
    with pytest.raises(
        ValueError,
        match=r"Argument 'workers' must be None \(embedded local workers\), 'in-process' "
        r"or a list of host:port addresses of cpml-worker daemons, not 'local'\.",
    ):
        CodedLogisticRegression(workers="local").fit(X, Y)
    with pytest.raises(
        ValueError,
        match=r"Argument 'random_state' must be an integer \(the --seed of cpml-master "
        r"train\), not RandomState",
    ):
        CodedLogisticRegression(workers="in-process", random_state=np.random.RandomState(0)).fit(X, Y)
    with pytest.raises(ValueError, match=r"Argument 'tls_ca' must be given to reach remote workers over TLS"):
        CodedLogisticRegression(workers=["127.0.0.1:1"] * 1).fit(X, Y)
    with pytest.raises(ValueError, match=r"Argument 'y' must vary to fit linear regression"):
        CodedLinearRegression(workers="in-process").fit(X, np.ones(len(X)))


def test_labels_come_back_as_given_and_the_artifact_serves_predict(tmp_path, capsys):
    est = CodedLogisticRegression(workers="in-process", iterations=10).fit(X, TEXT)
    assert list(est.classes_) == ["benign", "malignant"]
    np.testing.assert_array_equal(est.predict(X), np.where(est.decision_function(X) >= 0, "malignant", "benign"))
    np.testing.assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)
    np.testing.assert_allclose(np.exp(est.predict_log_proba(X)), est.predict_proba(X), rtol=1e-12)
    assert est.coef_.shape == (1, 30) and est.intercept_.shape == (1,)
    assert est.model_.preprocessing.classes == ("benign", "malignant")
    assert "labels: benign -> 0, malignant -> 1" in est.model_.notes
    assert est.privacy_["transport"].startswith("in process")
    est.model_.save(tmp_path / "model.json")
    with (tmp_path / "rows.csv").open("w", newline="") as f:
        csv.writer(f).writerows([*map(repr, map(float, row)), label] for row, label in zip(X, TEXT))
    assert (
        cli.main(
            [
                "predict",
                "--model",
                str(tmp_path / "model.json"),
                "--data",
                str(tmp_path / "rows.csv"),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == ExitCode.OK
    )
    with (tmp_path / "p.csv").open() as f:
        assert [row["label"] for row in csv.DictReader(f)] == est.predict(X).tolist()
    assert f"({round(est.score(X, TEXT) * len(X))} of {len(X)} rows)" in capsys.readouterr().out


def _cli_weights(tmp_path, x, y, *flags: str) -> np.ndarray:
    """`cpml-master train` as a separate process on a CSV of (x, y); the weights of its model.json."""
    path = tmp_path / "data.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*(f"f{i}" for i in range(x.shape[1])), "target"])
        out.writerows([*map(repr, map(float, row)), label] for row, label in zip(x, y))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            "--dataset",
            str(path),
            "--out",
            str(tmp_path / "cli"),
            "--log-level",
            "error",
            "--no-progress",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads((tmp_path / "cli" / "model.json").read_text())["weights"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logistic", "linear"])
def test_the_same_weights_as_the_command_line_for_the_same_seed(tmp_path, model):
    if model == "logistic":
        x, y, estimator = X, TEXT, CodedLogisticRegression
    else:
        x, y = load_diabetes(return_X_y=True)
        estimator = CodedLinearRegression
    flags = ("--model", model, "--workers-local", "6", "--seed", "7", "--iterations", "15")
    expected = _cli_weights(tmp_path, x, y, *flags, "--test-fraction", "0")
    on_workers = estimator(n_workers=6, random_state=7, iterations=15).fit(x, y)  # default: embedded workers
    in_process = estimator(n_workers=6, random_state=7, iterations=15, workers="in-process").fit(x, y)
    assert on_workers.weights_.tobytes() == expected.tobytes() == in_process.weights_.tobytes()
    assert on_workers.privacy_["transport"].startswith("embedded cpml-worker processes")
    cli_model = load_model(tmp_path / "cli" / "model.json")
    for field in ("scaling", "prescale", "center", "spread", "intercept", "classes", "target_center"):
        assert getattr(on_workers.model_.preprocessing, field) == getattr(cli_model.preprocessing, field)
    np.testing.assert_array_equal(on_workers.predict(x), cli_model.predict(x))


@pytest.mark.slow
def test_inside_a_pipeline_and_cross_val_score_on_embedded_workers():
    pipeline = make_pipeline(SelectKBest(k=10), CodedLogisticRegression(iterations=20))  # 10 embedded workers
    scores = cross_val_score(pipeline, X, TEXT, cv=3)
    assert scores.min() > 0.88
    in_process = pipeline.set_params(codedlogisticregression__workers="in-process")
    assert cross_val_score(in_process, X, TEXT, cv=3).tolist() == scores.tolist()  # the same weights, fold by fold
    regression = make_pipeline(CodedLinearRegression(n_workers=4, iterations=30))
    x, y = load_diabetes(return_X_y=True)
    assert cross_val_score(regression, x, y, cv=3).mean() > 0.4  # R², as least squares gets about 0.48


@pytest.mark.slow
async def test_remote_daemons_over_mutual_tls_from_inside_a_running_event_loop(tmp_path):
    pki = make_pki(tmp_path / "pki")
    tls = (
        "--insecure",
        "false",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    )
    async with LocalWorkers(4, tmp_path / "workers", extra_args=tls) as daemons:
        # fit is synchronous; called from a running loop (as in a notebook) it runs its own loop in a thread
        remote = CodedLogisticRegression(
            workers=daemons.addresses,
            tls_ca=str(pki.ca),
            tls_cert=str(pki.client_cert),
            tls_key=str(pki.client_key),
            iterations=10,
            random_state=3,
        ).fit(X, Y)
    reference = CodedLogisticRegression(n_workers=4, workers="in-process", iterations=10, random_state=3).fit(X, Y)
    assert remote.weights_.tobytes() == reference.weights_.tobytes()
    assert remote.privacy_["transport"] == "mutual TLS (client certificate)"
    assert remote.privacy_["workers"] == 4 and remote.score(X, Y) > 0.9


def test_wddp_trains_one_party_per_group_within_the_budget():
    groups = np.arange(len(Y)) % 4
    est = cpml.WDDPLogisticRegression(epsilon=2.0, rounds=20, random_state=1).fit(X, TEXT, groups=groups)
    assert est.party_sizes_ == [143, 142, 142, 142] and est.n_iter_ == 20
    assert est.guarantees_["release_epsilon"] <= 2.0 and set(est.guarantees_["party_epsilons"]) == {
        "party-0",
        "party-1",
        "party-2",
        "party-3",
    }
    assert list(est.classes_) == ["benign", "malignant"] and est.score(X, TEXT) > 0.85
    again = cpml.WDDPLogisticRegression(epsilon=2.0, rounds=20, random_state=1).fit(X, TEXT, groups=groups)
    assert again.weights_.tobytes() == est.weights_.tobytes()  # seeded noise: tests only, not private
    secure = [cpml.WDDPLogisticRegression(epsilon=2.0, rounds=20).fit(X, TEXT, groups=groups) for _ in range(2)]
    assert secure[0].weights_.tobytes() != secure[1].weights_.tobytes()  # default: noise from the OS CSPRNG
    scores = cross_val_score(
        make_pipeline(cpml.WDDPLogisticRegression(rounds=20)),
        X,
        TEXT,
        cv=3,
        params={"wddplogisticregression__groups": groups},
    )  # one party per group
    assert scores.min() > 0.8
    with pytest.raises(
        ValueError,
        match=r"Argument 'groups' must name the party of each of the 569 rows, not "
        r"shape \(3,\)\.",
    ):
        cpml.WDDPLogisticRegression().fit(X, Y, groups=[0, 1, 2])


@pytest.mark.slow
def test_wddp_plans_the_run_as_cpml_master_aggregate_does(tmp_path):
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([*map(repr, map(float, row)), label] for row, label in zip(X, TEXT))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "aggregate",
            "--dataset",
            str(path),
            "--test-data",
            str(path),
            "--parties",
            "3",
            "--rounds",
            "10",
            "--epsilon",
            "2",
            "--seed",
            "5",
            "--out",
            str(tmp_path / "run"),
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    est = cpml.WDDPLogisticRegression(parties=3, rounds=10, epsilon=2.0, random_state=5).fit(X, TEXT)
    assert est.guarantees_ == metrics["guarantees"]  # the same parties, sizes, noise multiplier and accounting
    assert est.party_sizes_ == sorted(est.party_sizes_) and sum(est.party_sizes_) == len(Y)
    assert abs(est.score(X, TEXT) - metrics["history"][-1]["test_accuracy"]) < 0.05  # the noise differs
