"""Linear regression on real-valued targets: loading, standardised targets, R² and RMSE, and the fit itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

from cpml import data
from cpml.errors import ExitCode
from cpml.master import cli
from cpml.protocol import models


def _train(tmp_path, *flags: str) -> list[str]:
    return ["train", "--out", str(tmp_path / "run"), "--log-level", "error", "--no-progress", *flags]


def _r2(y: np.ndarray, prediction: np.ndarray) -> float:
    return 1.0 - float(np.sum((y - prediction) ** 2) / np.sum((y - y.mean()) ** 2))


def _least_squares_r2(ds: data.Dataset) -> float:
    """Test R² of ordinary least squares (with an intercept) on the dataset's own split and scaling."""

    def design(x: np.ndarray) -> np.ndarray:
        return np.column_stack([x, np.ones(len(x))])

    w, *_ = np.linalg.lstsq(design(ds.x_train), ds.y_train, rcond=None)
    return _r2(ds.y_test, design(ds.x_test) @ w)


def _dataset_of(argv: list[str]) -> data.Dataset:
    """The split and scaled data a `cpml-master train` command line trains on (whatever the defaults are)."""
    from cpml.master.job import load_training_data
    from cpml.master.settings import parse_train_args, train_settings

    return load_training_data(train_settings(parse_train_args(argv[1:])))


def test_diabetes_for_linear_keeps_442_real_targets_standardised_on_the_training_split():
    ds = data.load_dataset("diabetes", model="linear")
    x, y = load_diabetes(return_X_y=True)
    assert len(ds.y_train) + len(ds.y_test) == 442 and ds.features == 10
    assert ds.y_train.mean() == pytest.approx(0.0, abs=1e-12) and ds.y_train.std() == pytest.approx(1.0)
    restored = ds.target_mean + ds.target_std * np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_allclose(np.sort(restored), np.sort(y), rtol=1e-12)  # the real targets, none mapped
    assert len(np.unique(restored.round(6))) == 214
    # a plain seeded split (no stratification), the same rows train_test_split picks
    _, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0)
    np.testing.assert_allclose(ds.target_mean + ds.target_std * ds.y_train, y_train, rtol=1e-12)
    assert ds.target_mean == pytest.approx(y_train.mean()) and ds.target_std == pytest.approx(y_train.std())
    assert ds.notes[0] == "diabetes: 442 rows x 10 features; 353 train, 89 test (shuffled, seed 0)"
    assert ds.notes[1].startswith("targets: standardised to mean 0, std 1 on the training split (mean 151.606, std")
    assert not any(note.startswith("labels: ") for note in ds.notes)


def test_linear_regression_reads_real_targets_from_files(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 2))
    y = 1e6 + 5e5 * x[:, 0] + rng.normal(size=30)
    np.savez(tmp_path / "r.npz", x=x, y=y)
    ds = data.load_dataset(str(tmp_path / "r.npz"), model="linear", scaling="standard", intercept=True)
    np.testing.assert_allclose(
        np.sort(ds.target_mean + ds.target_std * np.concatenate([ds.y_train, ds.y_test])), np.sort(y), rtol=1e-12
    )
    huge = data.load_dataset(str(tmp_path / "r.npz"), model="linear")
    np.savez(tmp_path / "huge.npz", x=x, y=y * 1e300)  # statistics of 1e306 would overflow without care
    huge = data.load_dataset(str(tmp_path / "huge.npz"), model="linear")
    assert np.all(np.isfinite(huge.y_train)) and huge.y_train.std() == pytest.approx(1.0)
    assert huge.target_std == pytest.approx(ds.target_std * 1e300)


def _csv(path, labels) -> str:
    x = np.arange(2.0 * len(labels)).reshape(-1, 2)
    path.write_text("a,b,label\n" + "\n".join(f"{a},{b},{t}" for (a, b), t in zip(x, labels)) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        (
            "text",
            {},
            "Argument 'dataset' must have numeric targets for linear regression, not text such as 'yes' in "
            "column 3 ('label') of 't.csv'.",
        ),
        (
            "nan",
            {},
            "Argument 'dataset' must have a finite target on every row for linear regression, not nan on row 2 "
            "in array 'y' of 'nan.npz' (1 NaN/inf target(s)).",
        ),
        ("inf", {}, "not inf on row 0 in the first field of each line of 'inf.svm' (1 NaN/inf target(s))."),
        (
            "constant",
            {},
            "Argument 'dataset' must have targets that vary on the training split to fit linear "
            "regression, not the constant 7 on all 8 training rows of",
        ),
        (
            "diabetes",
            {"positive_label": "1"},
            "Argument 'positive_label' must be omitted for linear regression (its "
            "targets are real values, not classes), not '1'.",
        ),
        ("diabetes", {"model": "poisson"}, "Argument 'model' must be one of logistic, linear, not 'poisson'."),
        (
            "diabetes",
            {"model": "logistic"},
            "Argument 'dataset' must have exactly two label values for binary "
            "classification (or 3 to 100 text or whole-number classes of 2+ rows each "
            "for one-vs-rest), not 214 (25, 31, 37, 39, 40, ...) in bundled 'diabetes'; "
            "real-valued targets need linear regression (cpml-master train --model "
            "linear).",
        ),
        (
            "few",
            {"test_fraction": 0.5},
            "Argument 'test_fraction' must leave at least 2 training rows to standardise "
            "the targets on, not 0.5 (1 train, 2 test of the 3 rows of",
        ),
    ],
)
def test_linear_regression_refuses_targets_it_cannot_fit(tmp_path, case, kwargs, message):
    sources = {
        "text": lambda: _csv(tmp_path / "t.csv", ["1.5", "yes", "2"] * 4),
        "diabetes": lambda: "diabetes",
        "constant": lambda: _csv(tmp_path / "c.csv", ["7"] * 10),
        "few": lambda: _csv(tmp_path / "f.csv", ["1", "2", "3"]),
    }
    np.savez(tmp_path / "nan.npz", x=np.ones((5, 2)), y=np.array([1.0, 2.0, np.nan, 4.0, 5.0]))
    (tmp_path / "inf.svm").write_text("inf 1:1\n2 1:2\n3 1:3\n4 2:1\n")
    source = sources.get(case, lambda: str(tmp_path / f"{case}.{'svm' if case == 'inf' else 'npz'}"))()
    with pytest.raises(ValueError) as refused:
        data.load_dataset(source, **{"model": "linear", **kwargs})
    assert message in str(refused.value)


def test_r_squared_and_rmse_match_scikit_learn_and_scale_to_target_units():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(50, 3)), rng.normal(size=3)
    y = x @ w + rng.normal(size=50)
    prediction = x @ w
    assert models.r_squared(x, y, w, "linear") == pytest.approx(r2_score(y, prediction))
    assert models.rmse(x, y, w, "linear") == pytest.approx(np.sqrt(mean_squared_error(y, prediction)))
    mean, std = 150.0, 77.0  # standardised targets: the RMSE of the mapped-back predictions, in target units
    expected = np.sqrt(mean_squared_error(mean + std * y, mean + std * prediction))
    assert models.rmse(x, y, w, "linear", target_scale=std) == pytest.approx(expected)
    assert models.r_squared(x, y, w, "logistic") is None and models.rmse(x, y, w, "logistic") is None
    assert np.isnan(models.r_squared(x, np.ones(50), w, "linear"))


def test_train_linear_reports_r2_and_rmse_in_target_units(tmp_path, capsys):
    argv = _train(
        tmp_path,
        "--dataset",
        "diabetes",
        "--model",
        "linear",
        "--iterations",
        "5",
        "--workers-local",
        "4",
        "--progress",
    )
    assert cli.main(argv) == ExitCode.OK
    captured = capsys.readouterr()
    assert " r2=" in captured.err and " rmse=" in captured.err  # the progress line
    out = captured.out.splitlines()
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    final = metrics["final"]
    assert f"test R²: {final['test_r2']:.4f}   RMSE: {final['test_rmse']:.4g}   loss: {final['loss']:.4f}" in out
    assert any(line.startswith("targets: standardised") for line in out)
    assert final["test_accuracy"] is None and final["train_accuracy"] is None
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5] and all(r["test_r2"] is not None for r in rounds)
    # R² and RMSE recomputed from model.json on the original targets
    model = json.loads((run / "model.json").read_text())
    ds = _dataset_of(argv)
    prediction = model["targets"]["mean"] + model["targets"]["std"] * (ds.x_test @ np.array(model["weights"]))
    y_test = ds.target_mean + ds.target_std * ds.y_test
    assert final["test_r2"] == pytest.approx(_r2(y_test, prediction), rel=1e-9)
    assert final["test_rmse"] == pytest.approx(np.sqrt(np.mean((prediction - y_test) ** 2)), rel=1e-9)


def _linear_on_diabetes(tmp_path, *flags: str) -> tuple[float, float]:
    """Final test R² of `cpml-master train --dataset diabetes --model linear [flags]`, and least squares'."""
    argv = _train(tmp_path, "--dataset", "diabetes", "--model", "linear", *flags)
    assert cli.main(argv) == ExitCode.OK
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    return final["test_r2"], _least_squares_r2(_dataset_of(argv))


@pytest.mark.slow
def test_linear_regression_on_diabetes_with_default_settings_matches_least_squares(tmp_path):
    cpml_r2, ols_r2 = _linear_on_diabetes(tmp_path)
    assert cpml_r2 == pytest.approx(ols_r2, abs=0.01)


@pytest.mark.slow
def test_linear_regression_on_diabetes_with_an_intercept_matches_least_squares(tmp_path):
    cpml_r2, ols_r2 = _linear_on_diabetes(tmp_path, "--intercept")
    assert cpml_r2 == pytest.approx(ols_r2, abs=0.01)
