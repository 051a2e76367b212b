"""Dataset loading from every supported source, label mapping, scaling and splitting."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file

from cpml import data


def test_bundled_digits_4v9_is_binary_split_and_scaled():
    ds = data.load_dataset("digits-4v9", test_fraction=0.25, seed=1)
    assert ds.features == 64
    assert len(ds.x_train) + len(ds.x_test) == 361
    assert set(np.unique(ds.y_train)) == {0.0, 1.0}
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert ds.x_test.min() >= 0 and ds.x_test.max() <= 1
    assert "labels: 4 -> 0, 9 -> 1" in ds.notes
    assert ds.y_test.mean() == pytest.approx(ds.y_train.mean(), abs=0.05)  # stratified


def test_split_is_deterministic_for_a_seed():
    a, b = data.load_dataset("breast-cancer", seed=3), data.load_dataset("breast-cancer", seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, data.load_dataset("breast-cancer", seed=4).x_train)


def _toy(n=40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    y = np.where(x[:, 0] > 0, 1, -1)
    y[:2] = (-1, 1)
    return x, y


def test_csv_with_header_and_label_column(tmp_path):
    x, y = _toy()
    path = tmp_path / "toy.csv"
    table = np.column_stack([y, x])
    path.write_text("label,a,b,c\n" + "\n".join(",".join(map(str, row)) for row in table))
    rx, ry, name = data.load_raw(str(path), label_column=0)
    np.testing.assert_allclose(rx, x)
    np.testing.assert_array_equal(ry, y)
    assert name == "toy"


def test_npz_and_svmlight_load_the_same_data(tmp_path):
    x, y = _toy()
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    dump_svmlight_file(x, y, str(tmp_path / "toy.svm"))
    for file in ("toy.npz", "toy.svm"):
        rx, ry, _ = data.load_raw(str(tmp_path / file))
        np.testing.assert_allclose(rx, x, rtol=1e-12)
        np.testing.assert_array_equal(ry, y)
    ds = data.load_dataset(str(tmp_path / "toy.svm"), scaling="standard")
    assert "labels: -1 -> 0, 1 -> 1" in ds.notes[1]
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-12)


def test_bad_sources_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="Argument 'dataset' must be one of digits-4v9, breast-cancer"):
        data.load_raw("no-such-thing")
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match="Argument 'format' must be given for 'data.bin'"):
        data.load_raw(str(odd))
    np.savez(tmp_path / "wrong.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match=r"arrays 'x' and 'y', not 'wrong.npz' holding \['a'\]"):
        data.load_raw(str(tmp_path / "wrong.npz"))
    with pytest.raises(ValueError, match="exactly two classes"):
        data.binary_labels(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="Argument 'scaling' must be one of minmax, standard, none, not 'log'"):
        data.load_dataset("breast-cancer", scaling="log")
    np.savez(tmp_path / "nan.npz", x=np.array([[np.nan], [1.0]]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="must hold finite numbers"):
        data.load_dataset(str(tmp_path / "nan.npz"))


def test_intercept_appends_a_constant_column_after_scaling():
    plain = data.load_dataset("breast-cancer", scaling="standard")
    with_bias = data.load_dataset("breast-cancer", scaling="standard", intercept=True)
    assert with_bias.features == plain.features + 1
    np.testing.assert_array_equal(with_bias.x_train[:, :-1], plain.x_train)
    assert np.all(with_bias.x_train[:, -1] == 1) and np.all(with_bias.x_test[:, -1] == 1)
    assert with_bias.notes[-1] == "intercept: a constant-1 column appended as the last feature"
