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
    assert "labels: -1 -> 0, 1 -> 1" in ds.notes
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-12)


def test_bad_sources_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="Argument 'dataset' must be one of digits-4v9, breast-cancer"):
        data.load_raw("no-such-thing")
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match="Argument 'format' must be given for 'data.bin'"):
        data.load_raw(str(odd))
    np.savez(tmp_path / "wrong.npz", a=np.zeros(3))
    with pytest.raises(
        ValueError,
        match=r"arrays 'x' and 'y' \(or features/data and labels/target\), "
        r"not 'wrong.npz' holding \['a'\]",
    ):
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


# --- files as users have them: every variant reads the same rows, everything else is refused clearly ---

X = np.array(
    [
        [0.5, -1.25, 3.0],
        [2.0, 0.0, -0.5],
        [1.5, 4.0, 2.25],
        [-3.0, 1.0, 0.75],
        [0.25, -2.0, 1.0],
        [5.0, 0.5, -1.5],
        [-0.75, 2.5, 0.0],
        [1.0, -0.25, 4.5],
    ]
)
Y = np.array([0, 1, 0, 1, 1, 0, 1, 0])


def _write_csv(path, rows, header=None, sep=",", newline="\n", bom=False):
    lines = ([sep.join(header)] if header else []) + [sep.join(map(str, row)) for row in rows]
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (newline.join(lines) + newline).encode())
    return str(path)


@pytest.mark.parametrize(
    "variant",
    ["plain", "header", "bom", "bom+header", "crlf", "semicolon", "tab", "quoted", "gzip", "comments+blank lines"],
)
def test_csv_variants_read_every_row_the_same(tmp_path, variant):
    rows = [[*x, y] for x, y in zip(X, Y)]
    header = ["a", "b", "c", "label"] if "header" in variant else None
    path = tmp_path / "d.csv"
    if variant == "quoted":
        path.write_text("\n".join(",".join(f'"{v}"' for v in row) for row in rows) + "\n")
    elif variant == "gzip":
        import gzip

        path = tmp_path / "d.csv.gz"
        path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    elif variant == "comments+blank lines":
        path.write_text("# exported by hand\n\n" + "\n\n".join(",".join(map(str, r)) for r in rows) + "\n\n")
    else:
        _write_csv(
            path,
            rows,
            header,
            sep={"semicolon": ";", "tab": "\t"}.get(variant, ","),
            newline="\r\n" if variant == "crlf" else "\n",
            bom="bom" in variant,
        )
    raw = data.read_raw(str(path))
    np.testing.assert_array_equal(raw.x, X)  # a BOM once turned the first row into a "header" and dropped it
    np.testing.assert_array_equal(raw.y, Y)
    assert ("header line (a, b, c, label)" in raw.notes[-1]) == (header is not None)


def test_label_column_by_index_or_header_name(tmp_path):
    rows = [[x[0], y, x[1], x[2]] for x, y in zip(X, Y)]
    path = _write_csv(tmp_path / "d.csv", rows, ["a", "target", "b", "c"])
    for column in (1, "1", -3, "target"):
        raw = data.read_raw(path, label_column=column)
        np.testing.assert_array_equal(raw.x, X)
        np.testing.assert_array_equal(raw.y, Y)
    with pytest.raises(
        ValueError,
        match=r"Argument 'label_column' must name exactly one column of 'd.csv' "
        r"\(a, target, b, c\), not 'label'\.",
    ):
        data.read_raw(path, label_column="label")
    plain = _write_csv(tmp_path / "p.csv", rows)
    with pytest.raises(ValueError, match="must be a column number for 'p.csv' \\(it has no header line\\)"):
        data.read_raw(plain, label_column="target")
    with pytest.raises(ValueError, match="Argument 'label_column' must index one of the 4 columns"):
        data.read_raw(plain, label_column=4)
    # the default (last column) holds a feature here: the refusal says where the labels came from
    with pytest.raises(
        ValueError,
        match=r"exactly two label values .* not 8 .* in column 4 \('c'\) of 'd.csv'; "
        r"if the labels are in another column, pass --label-column target;",
    ):
        data.load_dataset(path)


@pytest.mark.parametrize(
    ("labels", "note"),
    [
        (("no", "yes"), "labels: no -> 0, yes -> 1"),
        (("B", "M"), "labels: B -> 0, M -> 1"),
        ((-1, 1), "labels: -1 -> 0, 1 -> 1"),
        ((1, 2), "labels: 1 -> 0, 2 -> 1"),
    ],
)
def test_labels_as_text_or_numbers_map_as_the_note_says(tmp_path, labels, note):
    x = np.vstack([X, X + 0.5])
    y = np.concatenate([Y, Y])
    path = _write_csv(tmp_path / "d.csv", [[labels[v], *row] for row, v in zip(x, y)], ["class", "a", "b", "c"])
    ds = data.load_dataset(path, label_column="class", test_fraction=0.25, scaling="none")
    assert note in ds.notes

    def labelled_one(ds):  # every row keeps its own label: which rows of x the model is told are class 1
        return {
            tuple(row)
            for row, label in zip(np.vstack([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test]))
            if label
        }

    assert labelled_one(ds) == {tuple(row) for row in x[y == 1]}
    flipped = data.load_dataset(
        path, label_column="class", test_fraction=0.25, scaling="none", positive_label=str(labels[0])
    )
    assert f"labels: {labels[1]} -> 0, {labels[0]} -> 1" in flipped.notes
    assert labelled_one(flipped) == {tuple(row) for row in x[y == 0]}
    with pytest.raises(ValueError, match=r"Argument 'positive_label' must be one of the two labels .*, not 'maybe'\."):
        data.load_dataset(path, label_column="class", positive_label="maybe")


@pytest.mark.parametrize(
    ("cell", "shown"),
    [("", "''"), ("nan", "'nan'"), ("inf", "'inf'"), ("NA", "'NA'"), ("abc", "'abc'"), ("1e400", "'1e400'")],
)
def test_a_cell_that_is_not_a_finite_number_is_named_by_line_and_column(tmp_path, cell, shown):
    rows = [[*map(str, x), str(y)] for x, y in zip(X, Y)]
    rows[4][1] = cell
    path = _write_csv(tmp_path / "d.csv", rows, ["a", "b", "c", "label"])
    with pytest.raises(
        ValueError,
        match=rf"Argument 'dataset' must have a finite number in every feature cell, "
        rf"not {shown} on line 6, column 2 \('b'\) of 'd.csv' \(1 such cell",
    ):
        data.read_raw(path)


def test_a_text_column_is_read_as_categories_and_named_as_the_labels_only_when_it_can_be(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [["MB"[v], *x] for x, v in zip(X, Y)], ["diagnosis", "a", "b", "c"])
    raw = data.read_raw(path)
    assert raw.categorical == (0,) and raw.x[:, 0].tolist() == ["MB"[v] for v in Y]
    with pytest.raises(
        ValueError,
        match=r"not 8 .* in column 4 \('c'\) of 'd.csv'; if the labels are in another "
        r"column, pass --label-column diagnosis;",
    ):
        data.load_dataset(path)
    no_header = _write_csv(tmp_path / "n.csv", [[*x, "MB"[v], 2.5 * v + i] for i, (x, v) in enumerate(zip(X, Y))])
    with pytest.raises(ValueError, match=r"pass --label-column 3;"):  # a 0-based index, as the flag takes
        data.load_dataset(no_header)
    several = _write_csv(tmp_path / "s.csv", [[v, "MB"[v], i] for i, v in enumerate(Y)], ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"pass --label-column x \(columns with two values: x, y\);"):
        data.load_dataset(several)
    spread = _write_csv(tmp_path / "r.csv", [[*x, i] for i, x in enumerate(X)], ["a", "b", "c", "z"])
    with pytest.raises(ValueError, match=r"in column 4 \('z'\) of 'r.csv'; --label-column picks the label column"):
        data.load_dataset(spread)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must hold rows of numbers, not the empty file 'd.csv'"),
        ("a,b,label\n", "must hold data rows, not 'd.csv' with only a header line"),
        ("1\n2\n", "must have feature columns and a label column separated by commas, semicolons or tabs"),
        ("1,2,0\n3,4,1\n5,6\n", "must have 3 cells on every line \\(as on its first\\), not 2 on line 3 of 'd.csv'"),
        ("1,2,0\n3,4,\n", "must have a label on every line, not an empty column 3 on line 2 of 'd.csv'"),
        ("1,2,0\n3,4,nan\n", "must have a label on every line, not a missing \\(NaN/inf\\) label on line 2"),
    ],
)
def test_malformed_csv_files_are_refused_with_the_reason(tmp_path, text, message):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        data.read_raw(str(tmp_path / "d.csv"))


def test_npz_other_names_shapes_and_contents(tmp_path):
    np.savez(tmp_path / "named.npz", features=X, labels=Y.reshape(-1, 1))
    raw = data.read_raw(str(tmp_path / "named.npz"))
    np.testing.assert_array_equal(raw.x, X)
    np.testing.assert_array_equal(raw.y, Y)
    assert "named.npz: labels of shape (8, 1) read as a vector" in raw.notes
    cases = {
        "flat.npz": (
            {"x": X[:, 0], "y": Y},
            (
                r"a 2-D array 'x' \(rows x features\) and a 1-D array 'y', not "
                r"shapes \(8,\) and \(8,\)"
            ),
        ),
        "short.npz": ({"x": X, "y": Y[:5]}, "one label per row, not 8 rows in 'x' and 5 labels in 'y'"),
        "text.npz": ({"x": X.astype(str), "y": Y}, "numbers in 'x', not dtype <U"),
        "object.npz": ({"x": np.array([X[0], "a"], dtype=object), "y": Y[:2]}, "saved without pickling"),
        "nan.npz": ({"x": np.where(X > 4, np.nan, X), "y": Y}, r"finite numbers, not nan at row 5, feature 0"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=f"Argument 'dataset' must .*{message}"):
            data.read_raw(str(tmp_path / name))


def test_svmlight_reads_1_and_0_based_indices_alike_and_says_which(tmp_path):
    def write(name, base):
        lines = [f"{2 * y - 1} " + " ".join(f"{j + base}:{v}" for j, v in enumerate(x) if v != 0) for x, y in zip(X, Y)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return data.read_raw(str(tmp_path / name))

    one, zero = write("one.svm", 1), write("zero.svm", 0)
    np.testing.assert_array_equal(one.x, X)
    np.testing.assert_array_equal(zero.x, X)
    assert "one.svm: feature indices read as 1-based, 3 features" in one.notes
    assert "zero.svm: feature indices read as 0-based, 3 features" in zero.notes
    (tmp_path / "bad.svm").write_text("1 1:0.5 2:x\n")
    with pytest.raises(ValueError, match="must be an svmlight/LIBSVM file .* not 'bad.svm'"):
        data.read_raw(str(tmp_path / "bad.svm"))


def test_the_wrong_format_or_a_directory_is_refused_in_one_line(tmp_path):
    csv_path = _write_csv(tmp_path / "d.csv", [[*x, y] for x, y in zip(X, Y)], ["a", "b", "c", "label"])
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    with pytest.raises(ValueError, match="must be a NumPy .npz archive \\(np.savez\\), not 'd.csv'"):
        data.read_raw(csv_path, fmt="npz")
    with pytest.raises(ValueError, match="must be UTF-8 text to be read as CSV, not 'd.npz'"):
        data.read_raw(str(tmp_path / "d.npz"), fmt="csv")
    with pytest.raises(ValueError, match="must be an svmlight/LIBSVM file"):
        data.read_raw(csv_path, fmt="svmlight")
    with pytest.raises(ValueError, match="or a data file, not the directory"):
        data.read_raw(str(tmp_path))


def test_too_few_rows_to_split_are_refused_before_splitting(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [[1, 2, 0], [3, 4, 1], [5, 6, 0]])
    with pytest.raises(
        ValueError, match="at least 2 rows of each label to split off a stratified test set, not 1 row labelled 1 in"
    ):
        data.load_dataset(path)
    with pytest.raises(
        ValueError,
        match=r"Argument 'test_fraction' must leave at least one row of each label on "
        r"both sides of the split of 361 rows, not 0.001 \(360 train, 1 test\)",
    ):
        data.load_dataset("digits-4v9", test_fraction=0.001)
    with pytest.raises(ValueError, match="Argument 'seed' must be an integer from 0 to 4294967295, not -1."):
        data.load_dataset("digits-4v9", seed=-1)


def test_more_features_than_rows_and_a_constant_column_load():
    x = np.random.default_rng(2).normal(size=(10, 30))
    x[:, 3] = 7.0
    train, test, _ = data.scale(x[:8], x[8:], "standard")
    assert np.isfinite(train).all() and np.isfinite(test).all()
    assert np.all(train[:, 3] == 0)


@pytest.mark.parametrize("method", ["minmax", "standard"])
def test_scaling_survives_huge_values_and_is_exact_otherwise(method):
    x = np.array([[1e300, 1.0], [1.0, 2.0], [2.0, 3.0], [-1e300, 5.0]])
    with np.errstate(over="raise", invalid="raise"):  # an overflow once turned a column into silent zeros
        train, _, _ = data.scale(x, x, method)
    assert np.isfinite(train).all()
    assert train[0, 0] > train[2, 0] >= train[1, 0] > train[3, 0]  # 1 and 2 are equal next to 1e300
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4)) * [1e-3, 1.0, 1e4, 3.0] + [0.0, 5.0, -2e5, 1e3]
    x[:, 3] = x[0, 3]  # a constant column
    train, test = x[:40], x[40:]
    lo, hi = train.min(axis=0), train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    expected = (
        ((train - lo) / span, np.clip((test - lo) / span, 0, 1))
        if method == "minmax"
        else ((train - mean) / std, (test - mean) / std)
    )
    got = data.scale(train, test, method)
    assert got[0].tobytes() == expected[0].tobytes() and got[1].tobytes() == expected[1].tobytes()
