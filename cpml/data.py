"""Datasets for training: CSV, NumPy .npz, LIBSVM/svmlight files or a bundled scikit-learn dataset.

For classification, labels become {0, 1} and a stratified held-out test split is kept aside; for linear
regression, targets stay real-valued, the split is plainly seeded and the targets are standardised on the
training split (their mean and std are kept to map predictions back). Features are scaled on the training
split only; every step leaves a note saying how. What each reader accepts, and what it does on its
own (header, separator, compression, index base), is listed in the README ("Your own data").
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import math
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cpml.options import DATA_FORMATS as FORMATS
from cpml.preprocessing import (  # noqa: F401  (binary_labels, is_label, scale: this API)
    MISSING,
    MISSING_CELLS,
    MODELS,
    SCALINGS,
    Preprocessing,
    binary_labels,
    category_texts,
    is_label,
    model_classes,
    scale,
)
from cpml.preprocessing import label_text as _label_text
from cpml.preprocessing import preview as _preview
from cpml.split import split_indices, test_rows

BUNDLED = ("digits-4v9", "breast-cancer", "diabetes", "digits")
MAX_CLASSES = 100  # more distinct labels than this are taken for real-valued targets, not classes
NPZ_FEATURE_KEYS = ("x", "X", "features", "data")
NPZ_LABEL_KEYS = ("y", "Y", "labels", "label", "target", "targets")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".npz": "npz",
    ".svm": "svmlight",
    ".svmlight": "svmlight",
    ".libsvm": "svmlight",
}
_COMPRESSION: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open}
_SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
_MAX_SEED = 2**32 - 1  # what the split's RandomState accepts


@dataclass(frozen=True)
class Dataset:
    """A split and scaled dataset (0/1 labels, or standardised real targets), with notes on what was done to it."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None  # None: no test rows (test_fraction None, the whole source trains)
    y_test: np.ndarray | None
    notes: tuple[str, ...]
    target_mean: float = 0.0  # y as read = target_mean + target_std * y_train (linear regression)
    target_std: float = 1.0
    preprocessing: Preprocessing | None = None  # what turned raw rows into x_train and x_test

    @property
    def features(self) -> int:
        """Number of columns of x."""
        return self.x_train.shape[1]


@dataclass(frozen=True)
class RawData:
    """Finite float64 features and raw labels as read, a name, and notes on how the source was read."""

    x: np.ndarray
    y: np.ndarray | None  # None: a file read for predictions that has no label column
    name: str
    notes: tuple[str, ...] = ()
    label_source: str = ""  # where the labels came from, for error messages
    features: tuple[str, ...] | None = None  # the feature columns' names, when a CSV header gives them
    label_name: str | None = None  # the label column's header name (CSV)
    label_index: int | None = None  # the label column's number, 0-based (CSV)
    categorical: tuple[int, ...] = ()  # feature columns read as categories (x is then an object array of cells)

    @property
    def labels(self) -> np.ndarray:
        """The raw labels, for training; a ValueError naming the source when it has none."""
        if self.y is None:
            raise ValueError(
                f"Argument 'dataset' must have a label column to train on, not {self.name!r}, which has none."
            )
        return self.y


def read_raw(
    source: str, fmt: str = "auto", label_column: int | str | None = -1, categorical: Sequence[int | str] = ()
) -> RawData:
    """Read a bundled dataset name or a file into features and raw labels, refusing anything malformed."""
    # label_column None (files read for predictions): a CSV has no label column, an .npz's labels are optional.
    # categorical: columns (as --label-column names them) to read as categories; a CSV's text columns are anyway.
    if source in BUNDLED:
        x, y = _bundled(source)
        raw = RawData(
            np.ascontiguousarray(x, dtype=np.float64), np.asarray(y), source, label_source=f"bundled {source!r}"
        )
        return _as_categories(raw, categorical, source)
    path = Path(source)
    if path.is_dir():
        raise ValueError(
            f"Argument 'dataset' must be one of {', '.join(BUNDLED)} or a data file, not the directory {source!r}."
        )
    if not path.is_file():
        raise ValueError(f"Argument 'dataset' must be one of {', '.join(BUNDLED)} or an existing file, not {source!r}.")
    fmt, compression = resolve_format(path, fmt)
    if fmt == "npz":
        if compression:
            raise ValueError(
                f"Argument 'dataset' must be an uncompressed .npz (it is a zip archive already), not {path.name!r}."
            )
        raw = _as_categories(_npz(path, labels_required=label_column is not None), categorical, path.name)
    elif fmt == "svmlight":
        raw = _as_categories(_svmlight(path), categorical, path.name)
    else:
        raw = _csv(path, _read_text(path, compression), label_column, categorical)
    if compression:
        raw = replace(raw, notes=(f"{path.name}: {compression[1:]}-compressed", *raw.notes))
    if raw.x.ndim != 2 or len(raw.x) == 0 or raw.x.shape[1] == 0:
        raise ValueError(
            f"Argument 'dataset' must hold at least one row and one feature, "
            f"not {path.name!r} with {raw.x.shape[0]} row(s) x {raw.x.shape[-1]} feature(s)."
        )
    if not raw.categorical:
        _check_finite(raw.x, path.name)
    # One memory layout whatever the reader (a CSV's feature columns come out column-major): the column
    # statistics, and so every bit of the scaled data, are then the same for the same numbers in any format.
    return replace(raw, x=np.ascontiguousarray(raw.x))


def _as_categories(raw: RawData, categorical: Sequence[int | str], file: str) -> RawData:
    """A numeric source with some columns read as categories (their numbers as text: 3.0 -> '3')."""
    if not categorical:
        return raw
    width = raw.x.shape[1]
    columns = sorted({column_index(spec, None, width, file, "categorical") for spec in categorical})
    x = raw.x.astype(object)
    for c in columns:
        x[:, c] = category_texts(raw.x[:, c])
    return replace(
        raw,
        x=x,
        categorical=tuple(columns),
        notes=(*raw.notes, f"{file}: feature column(s) {', '.join(str(c) for c in columns)} read as categories"),
    )


def load_raw(source: str, fmt: str = "auto", label_column: int | str = -1) -> tuple[np.ndarray, np.ndarray, str]:
    """Features (float64), raw labels and a name from a bundled dataset name or a file path."""
    raw = read_raw(source, fmt, label_column)
    return raw.x, raw.labels, raw.name


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    if name.startswith("digits"):
        digits = datasets.load_digits()  # 1797 rows x 64 pixels, ten classes; digits-4v9: the 4s and 9s
        keep = np.isin(digits.target, (4, 9)) if name == "digits-4v9" else slice(None)
        return digits.data[keep], digits.target[keep]
    if name == "diabetes":
        diabetes = datasets.load_diabetes()  # 442 rows x 10 features, real-valued targets (25 to 346)
        return diabetes.data, diabetes.target
    cancer = datasets.load_breast_cancer()
    return cancer.data, cancer.target


def _read_text(path: Path, compression: str | None) -> str:
    opener = _COMPRESSION.get(compression or "", open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"Argument 'dataset' must be a readable file, not {path.name!r} ({exc}).") from None
    try:
        return data.decode("utf-8-sig")  # drops a byte-order mark
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"Argument 'dataset' must be UTF-8 text to be read as CSV, not {path.name!r} "
            f"(byte {exc.start} is {data[exc.start : exc.start + 1]!r}); pass --format npz or "
            f"svmlight if it is one of those."
        ) from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _split_line(line: str, separator: str) -> list[str]:
    return [cell.strip() for cell in next(csv.reader([line], delimiter=separator))]


@dataclass(frozen=True)
class CsvLayout:
    """What the first line of a CSV text says: its lines, separator, first line's cells, and header or not."""

    lines: list[tuple[int, str]]  # (line number, line) of every non-blank, non-comment line
    separator: str
    first: list[str]
    header: bool

    @property
    def width(self) -> int:
        """Cells per line, as on the first."""
        return len(self.first)


def csv_layout(text: str, file: str) -> CsvLayout:
    """Find a CSV text's separator and whether its first line is a header (none of its cells is a number)."""
    # Lines starting with '#' or '|' (the UCI repository's convention) are comments.
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith(("#", "|"))
    ]
    if not lines:
        raise ValueError(f"Argument 'dataset' must hold rows of numbers, not the empty file {file!r}.")
    first_line = lines[0][1]
    separator = "," if "," in first_line else ";" if ";" in first_line else "\t" if "\t" in first_line else ","
    first = _split_line(first_line, separator)
    return CsvLayout(lines, separator, first, not any(_is_number(cell) for cell in first))


def _csv(path: Path, text: str, label_column: int | str | None, categorical: Sequence[int | str] = ()) -> RawData:
    # label_column None: a file read for predictions, every column a feature and no labels
    layout = csv_layout(text, path.name)
    lines, separator, width = layout.lines, layout.separator, layout.width
    if width < 2 and label_column is not None:
        raise ValueError(
            f"Argument 'dataset' must have feature columns and a label column separated by commas, "
            f"semicolons or tabs, not {path.name!r} with 1 column on line {lines[0][0]}."
        )
    names = layout.first if layout.header else None
    rows = lines[1:] if layout.header else lines
    if not rows:
        raise ValueError(f"Argument 'dataset' must hold data rows, not {path.name!r} with only a header line.")
    label = None if label_column is None else column_index(label_column, names, width, path.name)
    features = [i for i in range(width) if i != label]
    forced = {column_index(spec, names, width, path.name, "categorical") for spec in categorical}
    if label in forced:
        raise ValueError(
            f"Argument 'categorical' must name feature columns, not the label column {label_column!r} of {path.name!r}."
        )

    def column(i: int) -> str:
        return f"column {i + 1} ({names[i]!r})" if names else f"column {i + 1}"

    table = None
    if not forced:
        try:
            table = np.loadtxt(
                io.StringIO("\n".join(line for _, line in rows)),
                delimiter=separator,
                quotechar='"',
                ndmin=2,
                dtype=np.float64,
            )
        except ValueError:
            table = None  # text cells or a ragged line: the careful reader below finds out which
    notes: tuple[str, ...] = ()
    found: tuple[int, ...] = ()
    if table is not None and table.shape[1] == width and np.isfinite(table[:, features]).all():
        x, y = table[:, features], None if label is None else table[:, label]
    else:
        cells = _cells(rows, separator, width, path.name)
        x, found, notes = _features(cells, rows, features, forced, path.name, column, names)
        y = None if label is None else _labels(cells[:, label], rows, path.name, column(label))
    if y is not None and y.dtype.kind == "f" and not np.isfinite(y).all():
        number = rows[int(np.flatnonzero(~np.isfinite(y))[0])][0]
        raise ValueError(
            f"Argument 'dataset' must have a label on every line, not a missing (NaN/inf) label on "
            f"line {number} of {path.name!r}."
        )
    how = (
        f"{_SEPARATOR_NAMES[separator]}-separated, "
        + (f"header line ({', '.join(names)})" if names else "no header line")
        + (f", labels from {column(label)}" if label is not None else ", no label column")
    )
    return RawData(
        x,
        y,
        path.stem,
        (f"{path.name}: {how}", *notes),
        f"{column(label)} of {path.name!r}" if label is not None else "",
        features=tuple(names[i] for i in features) if names else None,
        label_name=names[label] if names and label is not None else None,
        label_index=label,
        categorical=found,
    )


def column_index(spec: int | str, names: list[str] | None, width: int, file: str, flag: str = "label_column") -> int:
    """The 0-based column a flag names: a header name, or an index (negative from the end)."""
    text = str(spec).strip()
    try:
        index = int(text)
    except ValueError:
        if names is None:
            raise ValueError(
                f"Argument {flag!r} must be a column number for {file!r} (it has no header line), not {text!r}."
            ) from None
        matches = [i for i, name in enumerate(names) if name == text]
        if len(matches) != 1:
            raise ValueError(
                f"Argument {flag!r} must name exactly one column of {file!r} ({', '.join(names)}), not {text!r}."
            ) from None
        return matches[0]
    if not -width <= index < width:
        raise ValueError(
            f"Argument {flag!r} must index one of the {width} columns of {file!r} "
            f"(0 to {width - 1}, or negative from the end), not {index}."
        )
    return index % width


def _cells(rows: list[tuple[int, str]], separator: str, width: int, file: str) -> np.ndarray:
    """Every cell of the rows, stripped, as an object array (rows x width); refuses a ragged line."""
    cells = []
    for (number, _), line in zip(rows, csv.reader((line for _, line in rows), delimiter=separator)):
        if len(line) != width:
            raise ValueError(
                f"Argument 'dataset' must have {width} cells on every line (as on its first), "
                f"not {len(line)} on line {number} of {file!r}."
            )
        cells.append([cell.strip() for cell in line])
    table = np.empty((len(cells), width), dtype=object)
    table[:] = cells
    return table


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _features(
    cells: np.ndarray,
    rows: list[tuple[int, str]],
    features: list[int],
    forced: set[int],
    file: str,
    column: Callable[[int], str],
    names: list[str] | None,
) -> tuple[np.ndarray, tuple[int, ...], tuple[str, ...]]:
    """Feature columns of numbers as float64, the others (text, or forced) as category cells; notes on missing."""
    x = np.empty((len(cells), len(features)), dtype=object)
    categorical, missing = [], {}
    for c, i in enumerate(features):
        texts = cells[:, i]
        values = [_number(cell) for cell in texts.tolist()]
        absent = np.array([cell in MISSING_CELLS for cell in texts.tolist()], dtype=bool)
        numbers = sum(v is not None for v in values)
        if i not in forced and 2 * numbers > int((~absent).sum()):  # mostly numbers: a numeric column
            bad = [r for r, v in enumerate(values) if v is None or not math.isfinite(v)]
            if bad:
                name = names[i] if names else str(i)
                hint = (
                    "fill or drop them first"
                    if all(values[r] is not None for r in bad)
                    else f"fill or drop them first, or pass --categorical {name} to read the column as categories"
                )
                raise ValueError(
                    f"Argument 'dataset' must have a finite number in every feature cell, not "
                    f"{texts[bad[0]]!r} on line {rows[bad[0]][0]}, {column(i)} of {file!r} ({len(bad)} "
                    f"such cell(s); {hint})."
                )
            x[:, c] = values
        else:
            categorical.append(c)
            x[:, c] = texts
            if absent.any():
                missing[names[i] if names else f"column {i + 1}"] = int(absent.sum())
    if not categorical:
        return x.astype(np.float64), (), ()
    notes: tuple[str, ...] = ()
    if missing:
        counts = ", ".join(f"{name} {count}" for name, count in missing.items())
        notes = (
            f"{file}: {sum(missing.values())} missing cell(s) (empty, '?' or 'NA') read as the category "
            f"{MISSING!r}: {counts}",
        )
    return x, tuple(categorical), notes


def _labels(cells: np.ndarray, rows: list[tuple[int, str]], file: str, where: str) -> np.ndarray:
    """A label column's cells: floats when every one is a number, else text; refuses an empty cell."""
    labels = cells.tolist()
    if "" in labels:
        number = rows[labels.index("")][0]
        raise ValueError(
            f"Argument 'dataset' must have a label on every line, not an empty {where} on line {number} of {file!r}."
        )
    if all(_is_number(v) for v in labels):
        return np.array([float(v) for v in labels])
    return np.array(labels)


def _npz(path: Path, labels_required: bool = True) -> RawData:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"Argument 'dataset' must be a NumPy .npz archive (np.savez), not {path.name!r} ({exc})."
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"Argument 'dataset' must be an .npz archive of arrays x and y, not {path.name!r} holding a single array."
        )
    with archive:
        keys = set(archive.files)
        xk = next((k for k in NPZ_FEATURE_KEYS if k in keys), None)
        yk = next((k for k in NPZ_LABEL_KEYS if k in keys), None)
        if xk is None or (yk is None and labels_required):
            raise ValueError(
                f"Argument 'dataset' must be an .npz with arrays 'x' and 'y' (or features/data and "
                f"labels/target), not {path.name!r} holding {sorted(keys)}."
            )
        try:
            x, y = archive[xk], None if yk is None else archive[yk]
        except ValueError as exc:  # object arrays need pickle, which is never allowed
            raise ValueError(
                f"Argument 'dataset' must hold numeric arrays saved without pickling, not {path.name!r} ({exc})."
            ) from None
    if y is None:
        if x.ndim != 2 or x.dtype.kind not in "biuf":
            raise ValueError(
                f"Argument 'dataset' must hold a 2-D array of numbers {xk!r} (rows x features), not "
                f"shape {x.shape} of dtype {x.dtype} in {path.name!r}."
            )
        return RawData(x.astype(np.float64, copy=False), None, path.stem, (f"{path.name}: no labels",))
    notes = []
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
        notes.append(f"{path.name}: labels of shape {(len(y), 1)} read as a vector")
    if x.ndim != 2 or y.ndim != 1:
        raise ValueError(
            f"Argument 'dataset' must hold a 2-D array {xk!r} (rows x features) and a 1-D array "
            f"{yk!r}, not shapes {x.shape} and {y.shape} in {path.name!r}."
        )
    if len(x) != len(y):
        raise ValueError(
            f"Argument 'dataset' must hold one label per row, not {len(x)} rows in {xk!r} and "
            f"{len(y)} labels in {yk!r} of {path.name!r}."
        )
    if x.dtype.kind not in "biuf":
        raise ValueError(f"Argument 'dataset' must hold numbers in {xk!r}, not dtype {x.dtype} in {path.name!r}.")
    return RawData(x.astype(np.float64, copy=False), y, path.stem, tuple(notes), f"array {yk!r} of {path.name!r}")


def _svmlight(path: Path) -> RawData:
    from sklearn.datasets import load_svmlight_file

    try:
        x, y = load_svmlight_file(str(path), zero_based=True)
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"Argument 'dataset' must be an svmlight/LIBSVM file ('label index:value ...' per line), "
            f"not {path.name!r} ({exc})."
        ) from None
    # As LIBSVM and sklearn's "auto": indices are 1-based unless some line uses index 0.
    one_based = x.shape[1] > 0 and not (x.indices == 0).any()
    x = x[:, 1:] if one_based else x
    note = f"{path.name}: feature indices read as {'1' if one_based else '0'}-based, {x.shape[1]} features"
    return RawData(x.toarray(), y, path.stem, (note,), f"the first field of each line of {path.name!r}")


def _check_finite(x: np.ndarray, file: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"Argument 'dataset' must hold finite numbers, not {x[r, c]} at row {r}, feature {c} "
            f"of {file!r} ({int(bad.sum())} NaN/inf value(s))."
        )


def _check_split(y: np.ndarray, test_fraction: float, name: str) -> None:
    values, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        rare = values[int(np.argmin(counts))]
        raise ValueError(
            f"Argument 'dataset' must have at least 2 rows of each label to split off a stratified "
            f"test set, not {counts.min()} row labelled {_label_text(rare)} in {name!r}."
        )
    n_test = test_rows(len(y), test_fraction)
    n_train = len(y) - n_test
    if min(n_test, n_train) < len(values):
        raise ValueError(
            f"Argument 'test_fraction' must leave at least one row of each label on both sides of "
            f"the split of {len(y)} rows, not {test_fraction} ({n_train} train, {n_test} test)."
        )


def load_dataset(
    source: str,
    test_fraction: float | None = 0.2,
    scaling: str = "minmax",
    seed: int = 0,
    fmt: str = "auto",
    label_column: int | str = -1,
    intercept: bool = False,
    positive_label: str | None = None,
    model: str = "logistic",
    test_source: str | None = None,
    categorical: Sequence[int | str] = (),
) -> Dataset:
    """Load, prepare the targets, split (seeded) unless test rows come from test_source or test_fraction is None."""
    _check_options(test_fraction, scaling, seed, model)
    raw = read_raw(source, fmt, label_column, categorical)
    fraction = test_fraction if test_source is None else None  # None: every row of source trains
    train, test, y_train, y_test, split_note = _split(raw, model, positive_label, fraction, seed, source)
    prep = Preprocessing.fit(
        raw.x,
        y_train,
        model=model,
        scaling=scaling,
        intercept=intercept,
        positive_label=positive_label,
        features=raw.features,
        label_name=raw.label_name,
        label_index=raw.label_index,
        name=source,
        categorical=raw.categorical,
        rows=train,
    )
    x_train = prep.transform(raw.x, train)  # each split's rows go from the table straight into their scaled array
    x_test = None
    if test_source is not None:
        raw_test, y_test = _test_rows(test_source, prep, fmt)
        x_test = prep.transform(raw_test)
        split_note += f"; {len(x_test)} test rows from {test_source}"
    elif y_test is not None:
        x_test, y_test = prep.transform(raw.x, test), prep.encode(y_test)
    else:
        split_note += " (no test split)"
    return Dataset(
        name=raw.name,
        x_train=x_train,
        y_train=prep.encode(y_train),
        x_test=x_test,
        y_test=y_test,
        notes=(split_note, *raw.notes, *prep.notes()),
        target_mean=prep.target_mean,
        target_std=prep.target_std,
        preprocessing=prep,
    )


def _split(
    raw: RawData, model: str, positive_label: str | None, test_fraction: float | None, seed: int, source: str
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray | None, str]:
    """Training and test row indices (stratified by the 0/1 labels; None: all, none), their raw targets, a note."""
    if model == "linear":
        y = real_targets(raw, positive_label)
        if test_fraction is not None:
            _check_regression_split(len(y), test_fraction, source)
        stratify, how = None, "shuffled"
    else:
        y, how = raw.labels, "stratified"
        stratify = _class_targets(raw, positive_label, test_fraction, source)
    shape = f"{raw.name}: {len(raw.x)} rows x {raw.x.shape[1]} features"
    if test_fraction is None:
        return None, None, y, None, f"{shape}, all for training"
    train, test = split_indices(len(y), test_fraction, seed, stratify)
    return train, test, y[train], y[test], f"{shape}; {len(train)} train, {len(test)} test ({how}, seed {seed})"


def _test_rows(test_source: str, prep: Preprocessing, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw rows of a test file matching the training schema, and their targets as the trainer sees them."""
    test = read_matching(test_source, prep, fmt, flag="test_data", require_labels=True)
    y = real_targets(test) if prep.model == "linear" else test.labels
    return test.x, prep.encode(y, test.label_source, "test_data")


def resolve_format(path: Path, fmt: str) -> tuple[str, str | None]:
    """The reader a file needs (csv, npz, svmlight) from --format or its extension, and its compression suffix."""
    if fmt not in FORMATS:
        raise ValueError(f"Argument 'format' must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in _COMPRESSION else None
    if fmt == "auto":
        fmt = _EXTENSIONS.get(suffixes[-1] if suffixes else "", "")
        if not fmt:
            raise ValueError(
                f"Argument 'format' must be given for {path.name!r} (csv, npz or svmlight): "
                f"its extension does not say, not 'auto'."
            )
    return fmt, compression


def read_matching(
    source: str, prep: Preprocessing, fmt: str = "auto", flag: str = "data", require_labels: bool = False
) -> RawData:
    """Rows for a fitted model: its feature columns (by name when both have names, else by count), labels if any."""
    try:
        raw = _read_matching(source, prep, fmt, flag)
    except ValueError as exc:  # the shared readers name the master's --dataset
        message = str(exc).replace("Argument 'dataset'", f"Argument '{flag}'", 1)
        raise ValueError(re.sub(r", or pass --categorical .* to read the column as categories", "", message)) from None
    if require_labels and raw.y is None:
        raise ValueError(
            f"Argument '{flag}' must hold labels to test the model on, not {source!r} without "
            f"{'its label column ' + repr(prep.label_name) if prep.label_name else 'a label column'}."
        )
    return raw


def _read_matching(source: str, prep: Preprocessing, fmt: str, flag: str) -> RawData:
    n = prep.n_features
    categorical = [column for column, _ in prep.categorical]
    path = Path(source)
    kind = "bundled" if source in BUNDLED or not path.is_file() else resolve_format(path, fmt)[0]
    if kind != "csv":
        raw = _matching_width(read_raw(source, fmt, None), n, flag, path.name, sparse=kind == "svmlight")
        return _matching_kinds(_as_categories(raw, categorical, path.name), prep, flag, path.name)
    layout = csv_layout(_read_text(path, resolve_format(path, fmt)[1]), path.name)
    names = layout.first if layout.header else None
    if names is not None and prep.features is not None:
        label = prep.label_name if prep.label_name in names else None
        _check_names(names, prep, label, flag, path.name)
        raw = read_raw(source, fmt, label, [prep.features[c] for c in categorical])
        assert raw.features is not None
        order = [raw.features.index(name) for name in prep.features]
        where = {old: new for new, old in enumerate(order)}
        raw = replace(
            raw, x=raw.x[:, order], features=prep.features, categorical=tuple(sorted(where[c] for c in raw.categorical))
        )
        return _matching_kinds(raw, prep, flag, path.name)
    if layout.width == n:
        label_column: int | str | None = None
    elif layout.width == n + 1:
        label_column = (
            prep.label_name
            if names and prep.label_name in names
            else prep.label_index
            if prep.label_index is not None and prep.label_index <= n
            else -1
        )
    else:
        raise ValueError(
            f"Argument '{flag}' must have the model's {n} feature columns ({n + 1} with the label), "
            f"not {layout.width} columns on line {layout.lines[0][0]} of {path.name!r}."
        )
    label_at = None if label_column is None else column_index(label_column, names, layout.width, path.name)
    in_file = [c if label_at is None or c < label_at else c + 1 for c in categorical]
    return _matching_kinds(read_raw(source, fmt, label_column, in_file), prep, flag, path.name)


def _matching_kinds(raw: RawData, prep: Preprocessing, flag: str, file: str) -> RawData:
    """Refuse text in a column the model reads as numbers (the reader took it for categories)."""
    numeric = set(raw.categorical) - {column for column, _ in prep.categorical}
    if numeric:
        c = min(numeric)
        cells = raw.x[:, c].tolist()
        text = next(cell for cell in cells if not _is_number(str(cell)))
        raise ValueError(
            f"Argument '{flag}' must have numbers in {prep.column_name(c)}, a numeric column of the "
            f"model, not text such as {text!r} in {file!r}."
        )
    return raw


def _check_names(names: list[str], prep: Preprocessing, label: str | None, flag: str, file: str) -> None:
    assert prep.features is not None
    missing = [name for name in prep.features if name not in names]
    extra = [name for name in names if name not in prep.features and name != label]
    unknown = f"; {len(extra)} column(s) the model does not read, such as {extra[0]!r}" if extra else ""
    if missing:
        raise ValueError(
            f"Argument '{flag}' must have the model's feature column {missing[0]!r}, not {file!r} "
            f"without it ({len(missing)} of the model's {prep.n_features} feature columns missing"
            f"{unknown})."
        )
    if extra:
        with_label = f" and its label column {prep.label_name!r}" if prep.label_name else ""
        raise ValueError(
            f"Argument '{flag}' must have only the model's feature columns{with_label}, not the column "
            f"{extra[0]!r} of {file!r} ({len(extra)} column(s) the model does not read)."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"Argument '{flag}' must name each column once, not {repeated[0]!r} twice in {file!r}.")


def _matching_width(raw: RawData, n: int, flag: str, file: str, sparse: bool) -> RawData:
    width = raw.x.shape[1]
    if sparse and width < n:  # svmlight leaves out zeros, so a file may end before the model's last feature
        x = np.zeros((len(raw.x), n))
        x[:, :width] = raw.x
        return replace(raw, x=x, notes=(*raw.notes, f"{file}: features {width + 1} to {n} are zero (absent)"))
    if width != n:
        raise ValueError(f"Argument '{flag}' must have the model's {n} features, not {width} in {file!r}.")
    return raw


def _check_options(test_fraction: float | None, scaling: str, seed: int, model: str) -> None:
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Argument 'test_fraction' must be in (0, 1), not {test_fraction}.")
    if scaling not in SCALINGS:
        raise ValueError(f"Argument 'scaling' must be one of {', '.join(SCALINGS)}, not {scaling!r}.")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"Argument 'seed' must be an integer from 0 to {_MAX_SEED}, not {seed}.")
    if model not in MODELS:
        raise ValueError(f"Argument 'model' must be one of {', '.join(MODELS)}, not {model!r}.")


def _class_targets(raw: RawData, positive_label: str | None, test_fraction: float | None, source: str) -> np.ndarray:
    """Labels to stratify the split by, after refusing a label column that is not two to MAX_CLASSES classes."""
    classes, counts = np.unique(raw.labels, return_counts=True)
    whole = raw.labels.dtype.kind not in "f" or bool(np.all(classes == np.round(classes)))
    if 2 < len(classes) <= MAX_CLASSES and whole and counts.min() > 1:  # one-vs-rest (not ids, not real targets)
        model_classes(raw.labels, positive_label)
        if test_fraction is not None:
            _check_split(raw.labels, test_fraction, source)
        return raw.labels
    if len(classes) != 2 and raw.label_source:
        hint = _label_hint(raw) if raw.label_source.startswith("column") else ""
        if len(classes) > 2 and raw.labels.dtype.kind in "biuf":
            hint += "; real-valued targets need linear regression (cpml-master train --model linear)"
        raise ValueError(
            f"Argument 'dataset' must have exactly two label values for binary classification (or 3 "
            f"to {MAX_CLASSES} text or whole-number classes of 2+ rows each for one-vs-rest), not "
            f"{len(classes)} ({_preview(classes)}) in {raw.label_source}{hint}."
        )
    y, _ = binary_labels(raw.labels, positive_label)
    if test_fraction is not None:
        _check_split(raw.labels, test_fraction, source)
    return y


def _label_hint(raw: RawData) -> str:
    """Point at the feature columns holding exactly two values, the ones --label-column could mean."""
    two = [c for c in range(raw.x.shape[1]) if len(set(raw.x[:, c].tolist())) == 2]
    if not two:
        return "; --label-column picks the label column"
    index = raw.label_index or 0
    flags = [raw.features[c] if raw.features else str(c + int(c >= index)) for c in two[:3]]
    return f"; if the labels are in another column, pass --label-column {flags[0]}" + (
        f" (columns with two values: {', '.join(flags)}{', ...' if len(two) > 3 else ''})" if len(two) > 1 else ""
    )


def real_targets(raw: RawData, positive_label: str | None = None) -> np.ndarray:
    """The raw labels as float64 targets for linear regression, refusing text, NaN/inf and --positive-label."""
    if positive_label is not None:
        raise ValueError(
            f"Argument 'positive_label' must be omitted for linear regression (its targets are real "
            f"values, not classes), not {str(positive_label)!r}."
        )
    where = f" in {raw.label_source}" if raw.label_source else ""
    if raw.labels.dtype.kind not in "biuf":
        text = next((v for v in map(str, raw.labels.tolist()) if not _is_number(v)), str(raw.labels.flat[0]))
        raise ValueError(
            f"Argument 'dataset' must have numeric targets for linear regression, not text such as {text!r}{where}."
        )
    y = raw.labels.astype(np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"Argument 'dataset' must have a finite target on every row for linear regression, not "
            f"{y[row]} on row {row}{where} ({int(bad.sum())} NaN/inf target(s))."
        )
    return y


def _check_regression_split(rows: int, test_fraction: float, source: str) -> None:
    n_test = test_rows(rows, test_fraction)
    if rows - n_test < 2:
        raise ValueError(
            f"Argument 'test_fraction' must leave at least 2 training rows to standardise the targets "
            f"on, not {test_fraction} ({rows - n_test} train, {n_test} test of the {rows} rows of "
            f"{source!r})."
        )
