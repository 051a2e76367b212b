"""Datasets for training: CSV, NumPy .npz, LIBSVM/svmlight files or a bundled scikit-learn dataset.

Labels become {0, 1}; features are scaled on the training split only (with a note saying how), and
a stratified held-out test split is kept aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUNDLED = ("digits-4v9", "breast-cancer")
FORMATS = ("auto", "csv", "npz", "svmlight")
SCALINGS = ("minmax", "standard", "none")
_EXTENSIONS = {".csv": "csv", ".npz": "npz", ".svm": "svmlight", ".svmlight": "svmlight",
               ".libsvm": "svmlight"}


@dataclass(frozen=True)
class Dataset:
    """A binary classification dataset, split and scaled, with notes on what was done to it."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    notes: tuple[str, ...]

    @property
    def features(self) -> int:
        """Number of columns of x."""
        return self.x_train.shape[1]


def load_raw(source: str, fmt: str = "auto", label_column: int = -1) -> tuple[np.ndarray, np.ndarray, str]:
    """Features (float64), raw labels and a name from a bundled dataset name or a file path."""
    if source in BUNDLED:
        return (*_bundled(source), source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"Argument 'dataset' must be one of {', '.join(BUNDLED)} or an existing file, "
                         f"not {source!r}.")
    if fmt not in FORMATS:
        raise ValueError(f"Argument 'format' must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    if fmt == "auto":
        fmt = _EXTENSIONS.get(path.suffix.lower(), "")
        if not fmt:
            raise ValueError(f"Argument 'format' must be given for {path.name!r} (csv, npz or svmlight): "
                             f"its extension does not say, not 'auto'.")
    loader = {"csv": _csv, "npz": _npz, "svmlight": _svmlight}[fmt]
    x, y = loader(path, label_column)
    return np.asarray(x, dtype=np.float64), np.asarray(y), path.stem


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    if name == "digits-4v9":
        digits = datasets.load_digits()
        keep = np.isin(digits.target, (4, 9))
        return digits.data[keep], digits.target[keep]
    cancer = datasets.load_breast_cancer()
    return cancer.data, cancer.target


def _csv(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
    with path.open() as f:
        first = f.readline().split(",")
    try:
        [float(v) for v in first]
        skip = 0
    except ValueError:
        skip = 1  # a header row
    table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    if table.shape[1] < 2:
        raise ValueError(f"Argument 'dataset' must be a CSV with features and a label column, "
                         f"not {path.name!r} with {table.shape[1]} column(s).")
    if not -table.shape[1] <= label_column < table.shape[1]:
        raise ValueError(f"Argument 'label_column' must index one of the {table.shape[1]} columns, "
                         f"not {label_column}.")
    return np.delete(table, label_column, axis=1), table[:, label_column]


def _npz(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        xk = next((k for k in ("x", "X", "features", "data") if k in keys), None)
        yk = next((k for k in ("y", "Y", "labels", "target") if k in keys), None)
        if xk is None or yk is None:
            raise ValueError(f"Argument 'dataset' must be an .npz with arrays 'x' and 'y', "
                             f"not {path.name!r} holding {sorted(keys)}.")
        return archive[xk], archive[yk]


def _svmlight(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_svmlight_file

    x, y = load_svmlight_file(str(path))
    return x.toarray(), y


def binary_labels(y: np.ndarray) -> tuple[np.ndarray, str]:
    """Map a two-class label vector to {0, 1} (smaller label -> 0); return it with a note."""
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"Argument 'y' must hold exactly two classes for binary classification, "
                         f"not {len(classes)} ({', '.join(map(str, classes[:5]))}{'...' if len(classes) > 5 else ''}).")
    low, high = (f"{c:g}" if isinstance(c, (float, np.floating)) else str(c) for c in classes)
    return (y == classes[1]).astype(np.float64), f"labels: {low} -> 0, {high} -> 1"


def scale(x_train: np.ndarray, x_test: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Scale features with statistics of the training split only; return both splits and a note."""
    if method == "none":
        return x_train, x_test, "features: not scaled"
    if method == "minmax":
        lo, hi = x_train.min(axis=0), x_train.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        # Test rows are clipped so every feature stays in [0, 1], the range the quantizer plans for.
        return ((x_train - lo) / span, np.clip((x_test - lo) / span, 0.0, 1.0),
                "features: min-max scaled to [0, 1] on the training split (test split clipped to [0, 1])")
    if method == "standard":
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return ((x_train - mean) / std, (x_test - mean) / std,
                "features: standardised to mean 0, std 1 on the training split")
    raise ValueError(f"Argument 'scaling' must be one of {', '.join(SCALINGS)}, not {method!r}.")


def load_dataset(source: str, test_fraction: float = 0.2, scaling: str = "minmax", seed: int = 0,
                 fmt: str = "auto", label_column: int = -1, intercept: bool = False) -> Dataset:
    """Load, binarise labels, split (stratified, seeded), scale and optionally add an intercept column."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Argument 'test_fraction' must be in (0, 1), not {test_fraction}.")
    if scaling not in SCALINGS:
        raise ValueError(f"Argument 'scaling' must be one of {', '.join(SCALINGS)}, not {scaling!r}.")
    x, raw_y, name = load_raw(source, fmt, label_column)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"Argument 'dataset' must hold finite numbers, not {int((~np.isfinite(x)).sum())} "
                         f"NaN/inf value(s) in {source!r}.")
    y, label_note = binary_labels(raw_y)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                                        stratify=y)
    x_train, x_test, scale_note = scale(x_train, x_test, scaling)
    split_note = (f"{name}: {len(x)} rows x {x.shape[1]} features; {len(x_train)} train, {len(x_test)} test "
                  f"(stratified, seed {seed})")
    notes = (split_note, label_note, scale_note)
    if intercept:
        x_train = np.column_stack([x_train, np.ones(len(x_train))])
        x_test = np.column_stack([x_test, np.ones(len(x_test))])
        notes += ("intercept: a constant-1 column appended as the last feature",)
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, notes=notes)
