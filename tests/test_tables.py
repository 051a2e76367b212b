"""Tables as users have them: text columns one-hot encoded, missing cells as a category, `|` comments, --categorical."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from cpml import data
from cpml.model import Model, load_model, load_sklearn
from cpml.preprocessing import MISSING, Preprocessing

CANCER = load_breast_cancer()
KEEP = [0, 4, 6, 7, 20, 21, 27]  # a few numeric columns of breast cancer, by name below
NAMES = ["texture", *(CANCER.feature_names[i].replace(" ", "_") for i in KEEP), "size", "diagnosis"]
LABELS = np.where(CANCER.target == 1, "benign", "malignant")
TRAIN, TEST = train_test_split(np.arange(len(LABELS)), test_size=0.25, random_state=3, stratify=LABELS)


def _table(seed: int = 1) -> np.ndarray:
    """Breast cancer with two banded text columns (texture, size) whose cells are sometimes '?', 'NA' or empty."""
    rng = np.random.default_rng(seed)
    texture = np.array(["low", "mid", "high"], dtype=object)[
        np.digitize(CANCER.data[:, 1], np.quantile(CANCER.data[:, 1], [1 / 3, 2 / 3]))
    ]
    size = np.array(["small", "medium", "large", "huge"], dtype=object)[
        np.digitize(CANCER.data[:, 3], np.quantile(CANCER.data[:, 3], [0.25, 0.5, 0.75]))
    ]
    for column in (texture, size):
        holes = rng.random(len(column)) < 0.08
        column[holes] = rng.choice(["?", "NA", ""], size=int(holes.sum()))
    cells = np.empty((len(LABELS), len(NAMES)), dtype=object)
    cells[:, 0], cells[:, -2], cells[:, -1] = texture, size, LABELS
    cells[:, 1:-2] = [[repr(float(v)) for v in row] for row in CANCER.data[:, KEEP]]
    return cells


TABLE = _table()


def _write(path, rows, names=NAMES, comment=None):
    with path.open("w", newline="") as f:
        if comment:
            f.write(f"| {comment}\n")
        out = csv.writer(f)
        if names is not None:
            out.writerow(names)
        out.writerows(rows)
    return str(path)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpml.master.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_text_columns_become_categories_with_missing_cells_counted(tmp_path):
    path = _write(tmp_path / "t.csv", TABLE[TRAIN], comment="UCI-style comment line")
    raw = data.read_raw(path, label_column="diagnosis")
    assert raw.categorical == (0, 8) and raw.features == tuple(NAMES[:-1])
    missing = [sum(cell in ("", "?", "NA") for cell in TABLE[TRAIN, c]) for c in (0, 8)]
    assert (
        f"t.csv: {sum(missing)} missing cell(s) (empty, '?' or 'NA') read as the category 'missing': "
        f"texture {missing[0]}, size {missing[1]}"
    ) in raw.notes
    ds = data.load_dataset(path, label_column="diagnosis", test_fraction=0.25, seed=2)
    prep = ds.preprocessing
    assert prep.categorical == (
        (0, ("high", "low", "mid", MISSING)),
        (8, ("huge", "large", "medium", MISSING, "small")),
    )
    assert (
        prep.n_features == 9 and prep.n_inputs == 7 + 4 + 5 and ds.features == prep.width == 16
    )  # no intercept by default here
    # one-hot columns after the numeric ones: each row has exactly one 1 per categorical column before scaling
    inputs, unseen = prep.encode_features(data.read_raw(path, label_column="diagnosis").x)
    assert unseen == {} and inputs[:, 7:11].sum(axis=1).tolist() == [1.0] * len(TRAIN)
    assert inputs[:, 11:16].sum(axis=1).tolist() == [1.0] * len(TRAIN)
    assert Preprocessing.from_json("logistic", json.loads(json.dumps(prep.to_json()))) == prep


def test_unseen_categories_encode_as_zeros_and_are_counted():
    x = TABLE[TRAIN][:, :-1]
    prep = Preprocessing.fit(x, LABELS[TRAIN], categorical=(0, 8))
    new = x[:5].copy()
    new[0, 0], new[1, 8], new[2, 8] = "striped", "tiny", None  # None is a missing cell, as pandas gives NaN
    inputs, unseen = prep.encode_features(new)
    assert unseen == {0: 1, 8: 1}
    assert inputs[0, 7:11].tolist() == [0.0] * 4 and inputs[2, 11:16].tolist() == [0, 0, 0, 1, 0]


def test_categorical_forces_numeric_columns_by_name_or_index(tmp_path):
    rows = [[str(i % 3), *row] for i, row in enumerate(TABLE[TRAIN][:, 1:-1].tolist())]
    path = _write(
        tmp_path / "n.csv", [[*r, label] for r, label in zip(rows, LABELS[TRAIN])], names=["grade", *NAMES[1:]]
    )
    for spec in ("grade", 0, -10):
        raw = data.read_raw(path, categorical=[spec])
        assert raw.categorical == (0, 8) and sorted(set(raw.x[:, 0])) == ["0", "1", "2"]
    with pytest.raises(ValueError, match=r"Argument 'categorical' must name exactly one column of 'n.csv' "):
        data.read_raw(path, categorical=["grades"])
    with pytest.raises(ValueError, match=r"Argument 'categorical' must name feature columns, not the label column"):
        data.read_raw(path, categorical=["diagnosis"])


def test_missing_cells_in_a_numeric_column_are_refused_naming_the_flag_that_helps(tmp_path):
    rows = TABLE[TRAIN].copy()
    rows[3, 1] = "?"
    path = _write(tmp_path / "m.csv", rows)
    with pytest.raises(
        ValueError,
        match=r"not '\?' on line 5, column 2 \('mean_radius'\) of 'm.csv' \(1 such "
        r"cell\(s\); fill or drop them first, or pass --categorical mean_radius",
    ):
        data.read_raw(path)


def test_the_exported_pipeline_one_hot_encodes_as_the_model_does(tmp_path):
    x = TABLE[TRAIN][:, :-1]
    prep = Preprocessing.fit(x, LABELS[TRAIN], categorical=(0, 8), intercept=True)
    model = Model(weights=np.random.default_rng(0).normal(size=prep.width), preprocessing=prep)
    pipeline = model.to_sklearn()
    rows = TABLE[TEST][:, :-1].copy()
    rows[0, 0], rows[1, 8], rows[2, 0] = "striped", np.nan, None
    np.testing.assert_array_equal(pipeline.decision_function(rows), model.decision_function(rows))
    assert pipeline.predict(rows).tolist() == model.predict(rows).tolist()


@pytest.mark.slow
def test_a_table_with_text_columns_trains_predicts_and_exports_on_real_processes(tmp_path):
    train = _write(tmp_path / "train.csv", TABLE[TRAIN])
    test = _write(tmp_path / "test.csv", TABLE[TEST], comment="held-out rows")
    done = _cli(
        "train",
        "--dataset",
        train,
        "--test-data",
        test,
        "--label-column",
        "diagnosis",
        "--workers-local",
        "5",
        "--iterations",
        "20",
        "--out",
        str(tmp_path / "run"),
        "--log-level",
        "error",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert final["test_accuracy"] > 0.9
    model_path = str(tmp_path / "run" / "model.json")
    assert json.loads((tmp_path / "run" / "model.json").read_text())["preprocessing"]["categorical"][0] == {
        "column": 0,
        "categories": ["high", "low", "mid", MISSING],
    }

    done = _cli("predict", "--model", model_path, "--data", test, "--out", str(tmp_path / "p.csv"))
    assert done.returncode == 0, done.stderr
    right, rows = map(int, re.search(r"accuracy: [\d.]+ \((\d+) of (\d+) rows\)", done.stdout).groups())
    assert rows == len(TEST) and right / rows == final["test_accuracy"]  # the run's figure, from the raw rows
    with open(tmp_path / "p.csv", newline="") as f:
        ours = [row["label"] for row in csv.DictReader(f)]

    done = _cli("export", "--model", model_path, "--out", str(tmp_path / "m.skops"))
    assert done.returncode == 0 and "columns -> prescale -> scale -> model" in done.stdout, done.stderr
    pipeline = load_sklearn(tmp_path / "m.skops")
    assert pipeline.predict(TABLE[TEST][:, :-1]).tolist() == ours  # the cells as the CSV holds them
    assert pipeline.score(TABLE[TEST][:, :-1], LABELS[TEST]) == final["test_accuracy"]
    np.testing.assert_array_equal(pipeline[-1].coef_[0], load_model(model_path).coef)

    unseen = TABLE[TEST].copy()
    unseen[:3, 8] = "gigantic"
    done = _cli("predict", "--model", model_path, "--data", _write(tmp_path / "u.csv", unseen), "--out", "-")
    assert done.returncode == 0, done.stderr
    assert (
        "warning: 3 cell(s) hold categories the model did not see in training; they encode as all zeros ('size' 3)"
    ) in done.stderr

    renamed = _write(tmp_path / "r.csv", TABLE[TEST], names=[n if n != "size" else "sizes" for n in NAMES])
    done = _cli("predict", "--model", model_path, "--data", renamed, "--out", str(tmp_path / "never.csv"))
    assert done.returncode == 2 and not (tmp_path / "never.csv").exists()
    assert done.stderr.startswith(
        "cpml-master predict: Argument 'data' must have the model's feature column 'size', not 'r.csv' without it"
    ), done.stderr
    texts = TABLE[TEST].copy()
    texts[::3, 1] = "wide"
    done = _cli("predict", "--model", model_path, "--data", _write(tmp_path / "x.csv", texts))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "cpml-master predict: Argument 'data' must have a finite number in every feature "
        "cell, not 'wide' on line 2, column 2 ('mean_radius') of 'x.csv' (48 such cell(s); "
        "fill or drop them first)."
    )
    texts[:, 1] = "wide"
    done = _cli("predict", "--model", model_path, "--data", _write(tmp_path / "x.csv", texts))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "cpml-master predict: Argument 'data' must have numbers in 'mean_radius', a "
        "numeric column of the model, not text such as 'wide' in 'x.csv'."
    )


def _schema() -> dict:
    """The public schema of the table: bounds from public knowledge of the measurements, the listed categories."""
    features = [{"name": "texture", "categories": ["high", "low", "mid", MISSING]}]
    features += [
        {"name": name, "min": 0.0, "max": float(2 * CANCER.data[:, i].max())} for name, i in zip(NAMES[1:-2], KEEP)
    ]
    return {"features": [*features, {"name": "size", "categories": ["small", "medium", "large", "huge", MISSING]}]}


def test_a_party_maps_its_columns_to_the_public_schema_by_name(tmp_path):
    from cpml.dp.features import FeatureBounds, read_feature_bounds
    from cpml.dp.party_cli import load_party_data

    (tmp_path / "schema.json").write_text(json.dumps(_schema()))
    bounds = read_feature_bounds(tmp_path / "schema.json")
    order = [8, *range(8), 9]  # the party keeps 'size' first: matched by name
    path = _write(tmp_path / "p.csv", TABLE[TRAIN][:, order], names=[NAMES[i] for i in order])
    x, y = load_party_data(path, "auto", "diagnosis", "none", "malignant", bounds)
    same, _ = load_party_data(
        _write(tmp_path / "q.csv", TABLE[TRAIN]), "auto", "diagnosis", "none", "malignant", bounds
    )
    np.testing.assert_array_equal(x, same)
    assert x.shape == (len(TRAIN), 4 + 7 + 5 + 1) and y.tolist() == (LABELS[TRAIN] == "malignant").tolist()
    renamed = _write(tmp_path / "r.csv", TABLE[TRAIN], names=[n if n != "size" else "sizes" for n in NAMES])
    with pytest.raises(
        ValueError,
        match=r"Argument 'data' must have the schema's feature column 'size' \(1 of its "
        r"9 missing\), not 'r.csv with columns texture, .*sizes'\.",
    ):
        load_party_data(renamed, "auto", "diagnosis", "none", "malignant", bounds)
    numbers_only = FeatureBounds(bounds.lower, bounds.upper, bounds.names)
    assert bounds.digest != numbers_only.digest  # the categories are part of what every party must share


@pytest.mark.slow
def test_wddp_parties_with_text_columns_train_on_one_public_schema_and_the_server_scores_them(tmp_path):
    from test_dp_auth import aggregation_server, finish_parties, start_party

    (tmp_path / "schema.json").write_text(json.dumps(_schema()))
    halves = np.array_split(TRAIN, 2)
    files = [_write(tmp_path / f"party{k}.csv", TABLE[rows]) for k, rows in enumerate(halves)]
    test = _write(tmp_path / "test.csv", TABLE[TEST], comment="server-side held-out rows")
    misfit = _write(tmp_path / "misfit.csv", TABLE[halves[0]][:, [*range(8), 9]], names=[*NAMES[:8], NAMES[9]])
    flags = (
        "--insecure",
        "--run-id",
        "t",
        "--feature-bounds",
        str(tmp_path / "schema.json"),
        "--label-column",
        "diagnosis",
        "--positive-label",
        "malignant",
    )
    with aggregation_server(
        tmp_path,
        *flags,
        "--party-names",
        "a,b",
        "--rounds",
        "10",
        "--epsilon",
        "8",
        "--test-data",
        test,
        "--join-timeout",
        "60",
    ) as server:
        tokens = server.out / "join-tokens"
        refused = finish_parties([start_party(server.address, misfit, *flags, "--token-file", str(tokens / "a"))])
        assert refused[0][0] == 2 and "must have the schema's feature column 'size'" in refused[0][2]
        parties = [
            start_party(server.address, path, *flags, "--token-file", str(tokens / name))
            for name, path in zip("ab", files)
        ]
        results = finish_parties(parties)
        assert [code for code, _, _ in results] == [0, 0], results
        assert server.finish() == 0, server.log()
    metrics = json.loads((server.out / "metrics.json").read_text())
    assert metrics["history"][-1]["test_accuracy"] > 0.85


def test_the_wddp_estimator_keeps_a_model_that_predict_and_export_read(tmp_path):
    from cpml.estimator import WDDPLogisticRegression

    x, y = CANCER.data[TRAIN], LABELS[TRAIN]
    est = WDDPLogisticRegression(random_state=0, epsilon=4.0).fit(x, y)
    model = est.model_
    assert model.preprocessing.unit_rows and model.privacy["differential_privacy"] == est.guarantees_
    np.testing.assert_array_equal(model.decision_function(CANCER.data[TEST]), est.decision_function(CANCER.data[TEST]))
    model.save(tmp_path / "model.json")
    again = load_model(tmp_path / "model.json")
    assert again.predict(CANCER.data[TEST]).tolist() == est.predict(CANCER.data[TEST]).tolist()
    # the unit-ball scaling of each row is positive: the exported pipeline predicts the same labels
    assert again.to_sklearn().predict(CANCER.data[TEST]).tolist() == est.predict(CANCER.data[TEST]).tolist()


@pytest.mark.slow
def test_an_embedded_wddp_run_on_a_table_with_text_columns_writes_a_model_predict_reproduces(tmp_path):
    train = _write(tmp_path / "train.csv", TABLE[TRAIN])
    test = _write(tmp_path / "test.csv", TABLE[TEST], comment="held-out rows")
    done = _cli(
        "aggregate",
        "--dataset",
        train,
        "--test-data",
        test,
        "--label-column",
        "diagnosis",
        "--rounds",
        "10",
        "--epsilon",
        "4",
        "--out",
        str(tmp_path / "run"),
        "--log-level",
        "error",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][-1]["test_accuracy"]
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["format"] == 2 and model["privacy"]["differential_privacy"] == model["guarantees"]
    done = _cli(
        "predict", "--model", str(tmp_path / "run" / "model.json"), "--data", test, "--out", str(tmp_path / "p.csv")
    )
    assert done.returncode == 0, done.stderr
    right, rows = map(int, re.search(r"accuracy: [\d.]+ \((\d+) of (\d+) rows\)", done.stdout).groups())
    assert rows == len(TEST) and right / rows == final
    done = _cli("export", "--model", str(tmp_path / "run" / "model.json"), "--out", str(tmp_path / "m.skops"))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        ours = [row["label"] for row in csv.DictReader(f)]
    assert load_sklearn(tmp_path / "m.skops").predict(TABLE[TEST][:, :-1]).tolist() == ours
