"""The model artifact (model.json format 2): one Preprocessing for training, predict and export; versions; schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import dump_svmlight_file

from cpml import data
from cpml.model import FORMAT, Model, load_model, load_sklearn, save_sklearn
from cpml.preprocessing import Preprocessing

RNG = np.random.default_rng(11)
X = RNG.normal(size=(80, 4)) * [1.0, 1e3, 1e-3, 5.0] + [0.0, -2e4, 0.0, 1.0]
X[:, 3] = 2.5  # a constant column
LABELS = np.where(X[:, 0] + RNG.normal(scale=0.3, size=80) > 0, "yes", "no")
NAMES = ["a", "b", "c", "d"]


def _csv(path, x, labels=None, names=NAMES, label_name="label", label_first=False):
    header = (
        ([label_name] if label_first and labels is not None else [])
        + list(names or [])
        + ([label_name] if labels is not None and not label_first else [])
    )
    lines = [",".join(header)] if names is not None else []
    for i, row in enumerate(x):
        cells = [repr(float(v)) for v in row]
        if labels is not None:
            cells = [str(labels[i]), *cells] if label_first else [*cells, str(labels[i])]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("scaling", ["standard", "minmax", "none"])
@pytest.mark.parametrize("model", ["logistic", "linear"])
def test_the_training_split_is_what_the_fitted_preprocessing_makes_of_the_raw_rows(tmp_path, scaling, model):
    y = LABELS if model == "logistic" else X[:, 0] * 3.0 + 100.0
    train = _csv(tmp_path / "train.csv", X[:60], y[:60])
    test = _csv(tmp_path / "test.csv", X[60:] * 1.5, y[60:])
    ds = data.load_dataset(train, scaling=scaling, intercept=True, model=model, test_source=test)
    prep = Preprocessing.from_json(model, json.loads(json.dumps(ds.preprocessing.to_json())))
    assert prep == ds.preprocessing  # JSON keeps every float exactly
    assert prep.transform(X[:60]).tobytes() == ds.x_train.tobytes()
    assert prep.transform(X[60:] * 1.5).tobytes() == ds.x_test.tobytes()
    assert prep.features == tuple(NAMES) and prep.label_name == "label" and prep.label_index == 4
    if model == "logistic":
        assert prep.classes == ("no", "yes") and "labels: no -> 0, yes -> 1" in ds.notes
        np.testing.assert_array_equal(ds.y_test, (y[60:] == "yes").astype(float))
    else:
        assert prep.targets(ds.y_train) == pytest.approx(y[:60], rel=1e-12)
    assert ds.notes[0] == "train: 60 rows x 4 features, all for training; 20 test rows from " + test


def test_a_split_run_keeps_its_old_arrays_and_notes_and_carries_the_preprocessing():
    ds = data.load_dataset("breast-cancer", 0.2, "standard", 3, intercept=True)
    assert ds.notes[-3:] == (
        "labels: 0 -> 0, 1 -> 1",
        "features: standardised to mean 0, std 1 on the training split",
        "intercept: a constant-1 column appended as the last feature",
    )
    x, y, _ = data.load_raw("breast-cancer")
    from sklearn.model_selection import train_test_split

    _, x_test, _, _ = train_test_split(x, y, test_size=0.2, random_state=3, stratify=y)
    assert ds.preprocessing.transform(x_test).tobytes() == ds.x_test.tobytes()  # the raw test rows, as predict reads


def test_no_test_split_trains_on_every_row():
    ds = data.load_dataset("digits-4v9", None, "standard", 0, intercept=True)
    assert len(ds.x_train) == 361 and ds.x_test is None and ds.y_test is None
    assert ds.notes[0] == "digits-4v9: 361 rows x 64 features, all for training (no test split)"


def test_test_rows_with_a_label_the_model_does_not_know_are_refused_by_name(tmp_path):
    train = _csv(tmp_path / "train.csv", X[:60], LABELS[:60])
    test = _csv(tmp_path / "test.csv", X[60:], np.where(LABELS[60:] == "yes", "yes", "maybe"))
    with pytest.raises(
        ValueError,
        match=r"Argument 'test_data' must hold only the model's labels \(no, yes\), not "
        r"'maybe' in column 5 \('label'\) of 'test.csv', row \d+ \(\d+ such row",
    ):
        data.load_dataset(train, scaling="standard", test_source=test)
    unlabelled = _csv(tmp_path / "nolabel.csv", X[60:])
    with pytest.raises(
        ValueError,
        match=r"Argument 'test_data' must hold labels to test the model on, not .* "
        r"without its label column 'label'",
    ):
        data.load_dataset(train, scaling="standard", test_source=unlabelled)


def _model(tmp_path, scaling="standard", model="logistic") -> Model:
    y = LABELS if model == "logistic" else X[:, 0] * 3.0 + 100.0
    ds = data.load_dataset(_csv(tmp_path / "train.csv", X, y), None, scaling, intercept=True, model=model)
    return Model(RNG.normal(size=ds.preprocessing.width), ds.preprocessing, plan={"iterations": 3}, dataset=ds.name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.pop("format"),
            r"must be a cpml model of format 2, not '.*model.json' without a format \(written by "
            r"an older cpml, or by --protocol bgw/bh08",
        ),
        (
            lambda s: s.update(format=None, guarantees={}),
            r"must be a cpml model of format 2, not '.*model.json', a "
            r"WD-DP model of cpml-master aggregate or cpml-party",
        ),
        (
            lambda s: s.update(format=3),
            r"must be a cpml model of format 2 \(what this cpml reads\), not format 3 in "
            r"'.*model.json'; upgrade cpml to read it\.",
        ),
        (lambda s: s.update(format="2"), r"must be a cpml model of format 2 .*, not format '2' in .*; retrain it\."),
        (
            lambda s: s.update(kind="something-else"),
            r"must be a model.json written by cpml-master train, not .* of kind "
            r"'something-else'",
        ),
        (
            lambda s: s["preprocessing"].pop("scaling"),
            r"must be an intact cpml model, not .* with a damaged KeyError: "
            r"'scaling'",
        ),
        (
            lambda s: s.update(weights=[1.0]),
            r"must be an intact cpml model, .*Argument 'weights' must be 5 finite "
            r"numbers \(features and intercept\), not shape \(1,\)\.$",
        ),
    ],
)
def test_other_versions_and_damaged_artifacts_are_refused_with_the_reason(tmp_path, change, message):
    state = _model(tmp_path).to_json()
    assert state["format"] == FORMAT == 2
    change(state)
    (tmp_path / "model.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="Argument 'model' " + message):
        load_model(tmp_path / "model.json")


def test_a_missing_or_non_json_model_is_refused(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"Argument 'model' must be a model.json written by cpml-master train, not a "
        r"missing file",
    ):
        load_model(tmp_path / "nope.json")
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"not '.*m.json' holding a JSON list\."):
        load_model(tmp_path / "m.json")


@pytest.mark.parametrize("scaling", ["standard", "minmax", "none"])
@pytest.mark.parametrize("model", ["logistic", "linear"])
def test_the_exported_pipeline_computes_the_same_model_on_raw_rows(tmp_path, scaling, model):
    m = _model(tmp_path, scaling, model)
    m.save(tmp_path / "model.json")
    loaded = load_model(tmp_path / "model.json")
    assert loaded.weights.tobytes() == m.weights.tobytes() and loaded.preprocessing == m.preprocessing
    save_sklearn(loaded, tmp_path / "model.skops")
    pipeline = load_sklearn(tmp_path / "model.skops")
    new = X * 1.7 - 0.5  # outside the training range too: min-max clips the same way
    if scaling != "none":  # the scalers do the same float operations as Preprocessing.transform
        assert pipeline[:-1].transform(new).tobytes() == m.preprocessing.transform(new)[:, :-1].tobytes()
    if model == "logistic":
        np.testing.assert_array_equal(pipeline.predict(new), m.predict(new))
        np.testing.assert_allclose(pipeline.predict_proba(new)[:, 1], m.probability(new), rtol=1e-12, atol=1e-15)
        assert list(pipeline.classes_) == ["no", "yes"]
    else:
        np.testing.assert_allclose(pipeline.predict(new), m.predict(new), rtol=1e-12)


class Step(BaseEstimator, TransformerMixin):
    """A step skops does not trust by default."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return x


def test_load_sklearn_loads_only_the_pipelines_cpml_writes(tmp_path):
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    skops.io.dump(Pipeline([("s", Step())]), str(tmp_path / "untrusted.skops"))
    with pytest.raises(
        ValueError,
        match=r"Argument 'path' must be a pipeline exported by cpml \(scalers and a linear "
        r"model\), not '.*untrusted.skops' holding test_model_artifact.Step\.",
    ):
        load_sklearn(tmp_path / "untrusted.skops")
    skops.io.dump(Pipeline([("f", FunctionTransformer(np.log1p))]), str(tmp_path / "other.skops"))
    with pytest.raises(ValueError, match=r"not '.*other.skops' holding FunctionTransformer\."):
        load_sklearn(tmp_path / "other.skops")


def _prep(tmp_path) -> Preprocessing:
    return data.load_dataset(_csv(tmp_path / "train.csv", X, LABELS), None, "standard", intercept=True).preprocessing


def test_rows_are_matched_to_the_model_by_column_name_whatever_their_order(tmp_path):
    prep = _prep(tmp_path)
    order = [2, 0, 3, 1]
    path = _csv(tmp_path / "shuffled.csv", X[:, order], LABELS, names=[NAMES[i] for i in order], label_first=True)
    raw = data.read_matching(path, prep)
    assert raw.x.tobytes() == X.tobytes() and list(raw.y) == list(LABELS)
    unlabelled = data.read_matching(_csv(tmp_path / "u.csv", X), prep)
    assert unlabelled.y is None and unlabelled.x.tobytes() == X.tobytes()
    headerless = data.read_matching(_csv(tmp_path / "h.csv", X, LABELS, names=None), prep)
    assert headerless.x.tobytes() == X.tobytes() and list(headerless.y) == list(LABELS)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            lambda p: _csv(p, X, LABELS, names=["a", "bee", "c", "d"]),
            r"Argument 'data' must have the model's feature column 'b', not 'bad' without it \(1 of the model's 4 feature "
            r"columns missing; 1 column\(s\) the model does not read, such as 'bee'\)\.",
        ),
        (
            lambda p: _csv(p, np.column_stack([X, X[:, 0]]), LABELS, names=[*NAMES, "e"]),
            r"Argument 'data' must have only the model's feature columns and its label column 'label', not the column 'e' "
            r"of 'bad'",
        ),
        (
            lambda p: _csv(p, X[:, :3], names=None),
            r"Argument 'data' must have the model's 4 feature columns \(5 with the label\), not 3 columns on line 1 of 'bad'",
        ),
        (lambda p: np.savez(p, x=X[:, :3]), r"Argument 'data' must have the model's 4 features, not 3 in 'bad'"),
        (
            lambda p: _csv(p, X[:3], np.array(["yes", "no", "yes"]), names=["a", "b", "c", "a"]),
            r"Argument 'data' must have the model's feature column 'd', not 'bad' without it",
        ),
    ],
)
def test_rows_that_do_not_match_the_schema_are_refused_naming_the_column(tmp_path, write, message):
    path = tmp_path / "bad"
    write(path)
    if path.with_suffix(".npz").exists():
        path.with_suffix(".npz").rename(path)
    with pytest.raises(ValueError, match=message):
        data.read_matching(str(path), _prep(tmp_path), "npz" if message.endswith("3 in 'bad'") else "csv")


def test_svmlight_rows_may_end_before_the_models_last_feature(tmp_path):
    prep = _prep(tmp_path)
    x = X.copy()
    x[:, 2:] = 0.0  # svmlight leaves zeros out, so the file has only 2 features
    dump_svmlight_file(x, (LABELS == "yes").astype(int), str(tmp_path / "s.svm"), zero_based=False)
    raw = data.read_matching(str(tmp_path / "s.svm"), prep)
    np.testing.assert_allclose(raw.x, x, rtol=1e-15)  # dump_svmlight_file writes 16 digits
    assert raw.notes[-1] == "s.svm: features 3 to 4 are zero (absent)"


def test_the_model_scores_raw_rows_as_the_training_rounds_do(tmp_path):
    m = _model(tmp_path)
    metrics = m.evaluate(X, LABELS)
    z = m.preprocessing.transform(X) @ m.weights
    y = (LABELS == "yes").astype(float)
    assert metrics["accuracy"] == float(np.mean((z >= 0) == (y == 1)))
    from sklearn.metrics import log_loss

    assert metrics["log_loss"] == pytest.approx(log_loss(y, m.probability(X)), rel=1e-9)
    assert list(m.predict(X)) == list(np.where(z >= 0, "yes", "no"))
