"""The preprocessing a model applies to raw rows, in one place: one-hot encoding, feature scaling, intercept, labels.

`cpml-master train` (through cpml.data), `cpml-master predict`, the model artifact and the scikit-learn
estimators all use `Preprocessing`: fitted on the training split, it turns raw features into what the
trainer sees (the numeric columns in order, then one 0/1 column per category of each categorical column;
x' = (x / prescale - center) / spread over those inputs, clipped to [0, 1] for min-max, then a constant-1
column), raw labels into 0/1 (or real targets into standardised ones) and back. `prescale` holds exact
powers of two near each column's largest magnitude, so the statistics of huge values stay finite and,
for ordinary data, every result is bit-identical to scaling without it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cpml.errors import argument_error
from cpml.options import MODELS, SCALINGS

Label = str | int | float | bool
_SCALE_NOTES = {
    "none": "features: not scaled",
    "minmax": "features: min-max scaled to [0, 1] on the training split (test split clipped to [0, 1])",
    "standard": "features: standardised to mean 0, std 1 on the training split",
}
INTERCEPT_NOTE = "intercept: a constant-1 column appended as the last feature"
UNIT_ROWS_NOTE = "rows: scaled onto the unit ball when longer, the intercept column included (WD-DP)"
MISSING = "missing"  # the category of an empty, '?' or 'NA' cell in a categorical column
MISSING_CELLS = frozenset({"", "?", "NA"})
ROWS_AT_ONCE = 1 << 14  # rows measured or scaled at a time: the temporaries stay small however long the table


def label_text(value: object) -> str:
    """A raw label as people write it: 1.0 -> '1', 'yes' -> 'yes'."""
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def category_text(cell: object) -> str:
    """A categorical cell as the model keeps it: stripped text, a number as label_text, a missing cell as 'missing'."""
    if cell is None or (isinstance(cell, (float, np.floating)) and math.isnan(cell)):
        return MISSING
    text = label_text(cell).strip() if isinstance(cell, (float, np.floating)) else str(cell).strip()
    return MISSING if text in MISSING_CELLS else text


def category_texts(cells: np.ndarray) -> np.ndarray:
    """category_text of every cell of a column, as an object array."""
    return np.array([category_text(cell) for cell in cells.tolist()], dtype=object)


def one_hot(cells: np.ndarray, categories: Sequence[str]) -> tuple[np.ndarray, int]:
    """One 0/1 column per category for a column of cells (as category_text reads them); how many matched none."""
    position = {category: i for i, category in enumerate(categories)}
    codes = np.array([position.get(cell, -1) for cell in category_texts(cells).tolist()], dtype=np.int64)
    block = np.zeros((len(codes), len(categories)))
    known = codes >= 0
    block[np.flatnonzero(known), codes[known]] = 1.0
    return block, int((~known).sum())


def clip_rows(a: np.ndarray, bound: float) -> np.ndarray:
    """Scale each row with L2 norm above `bound` down to norm `bound`."""
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a * np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))


def preview(classes: np.ndarray) -> str:
    """The first few distinct labels, for messages."""
    return ", ".join(map(label_text, classes[:5])) + (", ..." if len(classes) > 5 else "")


def is_label(y: np.ndarray, label: str | float) -> np.ndarray:
    """Which entries of y equal label, given as text: compared as a number when y holds numbers."""
    if y.dtype.kind in "biuf":
        try:
            return y == float(label)
        except ValueError:
            return np.zeros(len(y), dtype=bool)
    return y.astype(str) == str(label).strip()


def _matches(y: np.ndarray, label: Label) -> np.ndarray:
    """Entries of y equal to a class as the model keeps it (same kind: exact; else as is_label compares)."""
    numeric_label = isinstance(label, (int, float, np.number)) and not isinstance(label, (bool, np.bool_))
    if (y.dtype.kind in "iuf" and numeric_label) or (y.dtype.kind == "b" and isinstance(label, (bool, np.bool_))):
        return np.asarray(y == label)
    if y.dtype.kind in "USO" and isinstance(label, str):
        return y.astype(str) == label
    return is_label(y, label if isinstance(label, str) else label_text(label))


def label_classes(y: np.ndarray, positive_label: str | float | None = None) -> tuple[Label, Label]:
    """The two classes of y as (the one mapped to 0, the one mapped to 1): the larger, or positive_label, is 1."""
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(
            f"Argument 'y' must hold exactly two classes for binary classification, "
            f"not {len(classes)} ({preview(classes)})."
        )
    positive = 1
    if positive_label is not None:
        matches = [i for i, c in enumerate(classes) if is_label(np.asarray([c]), positive_label)[0]]
        if not matches:
            raise ValueError(
                f"Argument 'positive_label' must be one of the two labels "
                f"({', '.join(map(label_text, classes))}), not {str(positive_label)!r}."
            )
        positive = matches[0]
    return _plain(classes[1 - positive]), _plain(classes[positive])


def _plain(value: object) -> Label:
    """A numpy scalar as the Python value JSON can hold."""
    return value.item() if isinstance(value, np.generic) else value  # type: ignore[return-value]


def label_note(classes: tuple[Label, ...]) -> str:
    """How labels map: 'labels: no -> 0, yes -> 1', or one-vs-rest over C classes."""
    if len(classes) > 2:
        return (
            f"labels: {len(classes)} classes ({preview(np.asarray(classes, dtype=object))}), one-vs-rest: one "
            f"model per class in one run, the prediction is the class whose model scores highest"
        )
    return f"labels: {label_text(classes[0])} -> 0, {label_text(classes[1])} -> 1"


def model_classes(y: np.ndarray, positive_label: str | float | None = None) -> tuple[Label, ...]:
    """The classes a logistic model of y keeps: two as label_classes orders them, or C > 2 in sorted order."""
    classes = np.unique(y)
    if len(classes) <= 2:
        return label_classes(y, positive_label)
    if positive_label is not None:
        raise ValueError(
            f"Argument 'positive_label' must be omitted for {len(classes)} classes (one-vs-rest trains "
            f"a model for each), not {str(positive_label)!r}."
        )
    return tuple(_plain(c) for c in classes)


def binary_labels(y: np.ndarray, positive_label: str | float | None = None) -> tuple[np.ndarray, str]:
    """Map a two-class label vector to {0, 1} (the larger, or positive_label, -> 1); return it with a note."""
    classes = label_classes(y, positive_label)
    return _matches(y, classes[1]).astype(np.float64), label_note(classes)


def power_of_two_scale(x: np.ndarray) -> np.ndarray:
    """Per-column powers of two near the largest magnitude: dividing by them is exact and keeps sums finite."""
    return _powers_of_two(np.abs(x).max(axis=0))


def _powers_of_two(largest: np.ndarray) -> np.ndarray:
    _, exponent = np.frexp(np.where(largest > 0, largest, 1.0))
    return np.ldexp(1.0, exponent)


def row_blocks(x: np.ndarray, rows: np.ndarray | None = None, size: int = ROWS_AT_ONCE) -> Iterator[np.ndarray]:
    """x's rows, or the rows `rows` picks in that order, `size` at a time (views of x, or gathered copies)."""
    count = len(x) if rows is None else len(rows)
    for lo in range(0, count, size):
        yield x[lo : lo + size] if rows is None else x[rows[lo : lo + size]]


def feature_statistics(
    x_train: np.ndarray, method: str, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prescale, center, spread) of the training features (the rows `rows` picks, when given) for a method."""
    if method not in SCALINGS:
        raise ValueError(f"Argument 'scaling' must be one of {', '.join(SCALINGS)}, not {method!r}.")
    count, d = (len(x_train) if rows is None else len(rows)), x_train.shape[1]
    if method == "none":
        return np.ones(d), np.zeros(d), np.ones(d)
    if count == 0:
        raise ValueError("Argument 'x_train' must hold at least one row to scale the features on, not 0.")
    # Block by block, with the bits of numpy's reductions over the whole row-major table: minima and maxima in
    # any order, sums row after row (numpy sums a single column pairwise instead: it is taken in one block).
    size = ROWS_AT_ONCE if d > 1 else count

    def blocks() -> Iterator[np.ndarray]:
        return (np.ascontiguousarray(b, dtype=np.float64) for b in row_blocks(x_train, rows, size))

    # Statistics of huge values (1e300) would overflow; on columns divided by a power of two they do not,
    # and for ordinary data the result is bit-identical.
    s = _powers_of_two(functools.reduce(np.maximum, (np.abs(b).max(axis=0) for b in blocks())))
    if method == "minmax":
        lo = functools.reduce(np.minimum, ((b / s).min(axis=0) for b in blocks()))
        hi = functools.reduce(np.maximum, ((b / s).max(axis=0) for b in blocks()))
        return s, lo, np.where(hi > lo, hi - lo, 1.0 / s)  # a constant column: test values just shifted
    mean = _running_sum(b / s for b in blocks()) / np.intp(count)  # as numpy's mean and std divide
    std = np.sqrt(_running_sum(np.square(b / s - mean) for b in blocks()) / np.intp(count))
    return s, mean, np.where(std > 0, std, 1.0 / s)


def _running_sum(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """The column sums of the blocks stacked, added row after row as numpy's sum(axis=0) of the whole does."""
    total = None
    for block in blocks:
        total = np.add.reduce(block if total is None else np.concatenate([total[None], block]), axis=0)
    assert total is not None, "at least one block"
    return total


def apply_scaling(
    x: np.ndarray, method: str, prescale: np.ndarray, center: np.ndarray, spread: np.ndarray, in_place: bool = False
) -> np.ndarray:
    """x scaled as fitted: (x / prescale - center) / spread, clipped to [0, 1] for min-max; unchanged for none."""
    # in_place: into x itself (float64), the same bits as a new array
    if method == "none":
        return x
    scaled = np.divide(x, prescale, out=x if in_place else None)
    scaled -= center
    scaled /= spread
    # Rows outside the training range are clipped so every feature stays in [0, 1], the range the quantizer
    # plans for; on the training rows themselves the clip changes nothing.
    return np.clip(scaled, 0.0, 1.0, out=scaled) if method == "minmax" else scaled


def scale(x_train: np.ndarray, x_test: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Scale features with statistics of the training split only; return both splits and a note."""
    stats = feature_statistics(x_train, method)
    return apply_scaling(x_train, method, *stats), apply_scaling(x_test, method, *stats), _SCALE_NOTES[method]


def target_statistics(y_train: np.ndarray, name: str = "y") -> tuple[float, float, float]:
    """(prescale, center, spread) standardising real targets on the training split; refuses constant targets."""
    s = float(power_of_two_scale(y_train))  # as for features: exact, and keeps huge targets' statistics finite
    center, spread = float(np.mean(y_train / s)), float(np.std(y_train / s))
    if spread == 0.0:
        raise ValueError(
            f"Argument 'dataset' must have targets that vary on the training split to fit linear "
            f"regression, not the constant {y_train[0]:g} on all {len(y_train)} training rows of "
            f"{name!r}."
        )
    mean, std = center * s, spread * s
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise ValueError(
            f"Argument 'dataset' must have targets whose mean and std are finite in float64, not "
            f"mean {mean} and std {std} on the training split of {name!r}."
        )
    return s, center, spread


def target_note(mean: float, std: float) -> str:
    """How real targets were standardised and how predictions map back."""
    return (
        f"targets: standardised to mean 0, std 1 on the training split (mean {mean:.6g}, std {std:.6g}); "
        f"predictions are mapped back as mean + std * prediction"
    )


@dataclass(frozen=True)
class Preprocessing:
    """Fitted preprocessing: raw feature schema, scaling, intercept, and the label mapping or target scaling."""

    model: str
    scaling: str
    prescale: tuple[float, ...]
    center: tuple[float, ...]
    spread: tuple[float, ...]
    intercept: bool
    classes: tuple[Label, ...] | None = None  # logistic: the raw labels mapped to 0 and to 1, or C > 2 (one-vs-rest)
    target_prescale: float = 1.0  # linear: y' = (y / target_prescale - target_center) / target_spread
    target_center: float = 0.0
    target_spread: float = 1.0
    features: tuple[str, ...] | None = None  # the raw feature columns' names, when the source named them
    label_name: str | None = None  # where the labels were read from: a CSV header name
    label_index: int | None = None  # ... or a CSV column number (0-based)
    # (raw feature column, its categories in one-hot order) for each categorical column; prescale, center and
    # spread then cover the encoded inputs: the numeric columns in order, then each column's categories
    categorical: tuple[tuple[int, tuple[str, ...]], ...] = ()
    unit_rows: bool = False  # WD-DP: each row, intercept included, scaled onto the unit ball if longer (G = 1)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise argument_error("model", f"be one of {', '.join(MODELS)}", self.model)
        if self.scaling not in SCALINGS:
            raise argument_error("scaling", f"be one of {', '.join(SCALINGS)}", self.scaling)
        if not len(self.prescale) == len(self.center) == len(self.spread) >= 1:
            raise argument_error(
                "prescale",
                "have one entry per feature, as center and spread",
                (len(self.prescale), len(self.center), len(self.spread)),
            )
        columns = [column for column, _ in self.categorical]
        if (
            columns != sorted(set(columns))
            or any(not 0 <= c < self.n_features for c in columns)
            or any(not categories for _, categories in self.categorical)
        ):
            raise argument_error(
                "categorical",
                f"list distinct columns of the {self.n_features} features in order, each with its categories",
                self.categorical,
            )
        if self.features is not None and len(self.features) != self.n_features:
            raise argument_error("features", f"name each of the {self.n_features} features", len(self.features))
        if (self.model == "logistic") != (self.classes is not None and len(self.classes) >= 2):
            raise argument_error(
                "classes", "be two or more labels for logistic regression and None for linear", self.classes
            )

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        model: str = "logistic",
        scaling: str = "standard",
        intercept: bool = True,
        positive_label: str | float | None = None,
        features: Sequence[str] | None = None,
        label_name: str | None = None,
        label_index: int | None = None,
        name: str = "y",
        categorical: Sequence[int] = (),
        rows: np.ndarray | None = None,
    ) -> Preprocessing:
        """Fit on the training split (x's rows `rows` picks, when given): categories, features', labels' statistics."""
        xa = np.asarray(x)
        if categorical and rows is not None:  # text tables are gathered whole: only numeric ones grow large
            xa, rows = xa[rows], None
        found = tuple((int(c), tuple(sorted(set(category_texts(xa[:, c]).tolist())))) for c in sorted(categorical))
        inputs = _OneHot(xa.shape[1], found).encode(xa)[0] if found else xa
        prescale, center, spread = feature_statistics(inputs, scaling, rows)
        targets: dict[str, Any] = {}
        if model == "linear":
            if positive_label is not None:
                raise ValueError(
                    f"Argument 'positive_label' must be omitted for linear regression (its targets "
                    f"are real values, not classes), not {str(positive_label)!r}."
                )
            s, c, sp = target_statistics(np.asarray(y, dtype=np.float64), name)
            targets = {"target_prescale": s, "target_center": c, "target_spread": sp}
        elif model == "logistic":
            targets = {"classes": model_classes(np.asarray(y), positive_label)}
        return cls(
            model=model,
            scaling=scaling,
            prescale=_floats(prescale),
            center=_floats(center),
            spread=_floats(spread),
            intercept=bool(intercept),
            features=None if features is None else tuple(map(str, features)),
            label_name=label_name,
            label_index=label_index,
            categorical=found,
            **targets,
        )

    @property
    def n_inputs(self) -> int:
        """How many encoded inputs the scaling covers: the numeric columns and one per category."""
        return len(self.prescale)

    @property
    def n_features(self) -> int:
        """How many raw feature columns the model reads."""
        return self.n_inputs - sum(len(categories) - 1 for _, categories in self.categorical)

    @property
    def width(self) -> int:
        """How many columns the trainer sees: the encoded inputs and the intercept column."""
        return self.n_inputs + int(self.intercept)

    @property
    def numeric_columns(self) -> list[int]:
        """The raw feature columns read as numbers, in order."""
        categorical = {column for column, _ in self.categorical}
        return [c for c in range(self.n_features) if c not in categorical]

    def column_name(self, column: int) -> str:
        """A raw feature column as messages name it: by header name, or 'column N' (1-based)."""
        return repr(self.features[column]) if self.features is not None else f"column {column + 1}"

    def _raw_rows(self, x: np.ndarray) -> np.ndarray:
        xa = np.asarray(x)
        if xa.ndim != 2 or xa.shape[1] != self.n_features:
            raise argument_error("x", f"have the model's {self.n_features} feature columns", xa.shape)
        return xa

    def encode_features(self, x: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """Raw rows as the encoded inputs (numeric, then one-hot), and per categorical column its unseen cells."""
        xa = self._raw_rows(x)
        if not self.categorical:
            return np.asarray(xa, dtype=np.float64), {}
        return _OneHot(self.n_features, self.categorical, self.column_name).encode(xa)

    @property
    def target_mean(self) -> float:
        """The training targets' mean (linear): predictions are target_mean + target_std * (x' @ w)."""
        return self.target_center * self.target_prescale

    @property
    def target_std(self) -> float:
        """The training targets' standard deviation (linear)."""
        return self.target_spread * self.target_prescale

    def transform(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Raw feature rows (n x n_features, or those `rows` picks) as the trainer saw them: scaled, with intercept."""
        xa = self._raw_rows(x)
        out = np.empty((len(xa) if rows is None else len(rows), self.width))
        stats = np.asarray(self.prescale), np.asarray(self.center), np.asarray(self.spread)
        # Block by block into the one array returned, each scaled while in cache; a one-hot encoding's errors
        # number the rows from the first, so a table with categories is one block.
        size = len(out) if self.categorical else ROWS_AT_ONCE
        lo = 0
        for block in row_blocks(xa, rows, max(size, 1)):
            inputs = out[lo : lo + len(block), : self.n_inputs]
            inputs[...] = self.encode_features(block)[0]
            apply_scaling(inputs, self.scaling, *stats, in_place=True)
            lo += len(block)
        if self.intercept:
            out[:, -1] = 1.0
        return clip_rows(out, 1.0) if self.unit_rows else out

    @property
    def n_classes(self) -> int:
        """Weight columns the model has: 1 (two classes, or linear), or C for C > 2 one-vs-rest classes."""
        return len(self.classes) if self.classes is not None and len(self.classes) > 2 else 1

    def encode(self, y: np.ndarray, source: str = "", name: str = "y") -> np.ndarray:
        """Raw labels as 0/1 (one-hot rows for C > 2) or standardised targets (linear); refuses unknown labels."""
        ya = np.asarray(y)
        if self.classes is None:
            return (ya.astype(np.float64) / self.target_prescale - self.target_center) / self.target_spread
        hits = np.zeros((len(ya), len(self.classes)), dtype=bool)
        for c, label in enumerate(self.classes):
            hits[:, c] = _matches(ya, label)
        unknown = ~hits.any(axis=1)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            where = f" in {source}, row {row + 1}" if source else f" on row {row + 1}"
            raise ValueError(
                f"Argument {name!r} must hold only the model's labels "
                f"({preview(np.asarray(self.classes, dtype=object))}), not "
                f"{label_text(_plain(ya[row]))!r}{where} ({int(unknown.sum())} such row(s))."
            )
        return hits.astype(np.float64) if self.n_classes > 1 else hits[:, 1].astype(np.float64)

    def labels(self, chosen: np.ndarray) -> np.ndarray:
        """The raw label of each prediction: True picks the class mapped to 1; for C > 2, a class index."""
        assert self.classes is not None, "labels() is for logistic regression"
        index = np.asarray(chosen).astype(np.int64)
        return np.asarray(self.classes, dtype=object)[index]

    def targets(self, z: np.ndarray) -> np.ndarray:
        """Predictions on the standardised scale mapped back to the targets' units (linear)."""
        return self.target_mean + self.target_std * np.asarray(z, dtype=np.float64)

    def notes(self) -> tuple[str, ...]:
        """What was done to labels and features, as the training notes say it."""
        first = label_note(self.classes) if self.classes is not None else target_note(self.target_mean, self.target_std)
        return (
            first,
            *self._categorical_notes(),
            _SCALE_NOTES[self.scaling],
            *((INTERCEPT_NOTE,) if self.intercept else ()),
            *((UNIT_ROWS_NOTE,) if self.unit_rows else ()),
        )

    def _categorical_notes(self) -> tuple[str, ...]:
        if not self.categorical:
            return ()
        columns = ", ".join(f"{self.column_name(c)} ({len(categories)})" for c, categories in self.categorical)
        return (
            f"categorical: one-hot encoded on the training split, numeric columns first, then the categories of "
            f"{columns}; unseen categories encode as all zeros",
        )

    def to_json(self) -> dict[str, Any]:
        """The preprocessing as JSON values (floats round-trip exactly)."""
        out: dict[str, Any] = {
            "features": {"count": self.n_features, "names": None if self.features is None else list(self.features)},
            "categorical": [{"column": c, "categories": list(categories)} for c, categories in self.categorical],
            "scaling": {
                "method": self.scaling,
                "inputs": "the numeric columns in order, then each categorical column's categories as 0/1",
                "formula": "(x / prescale - center) / spread"
                + (", clipped to [0, 1]" if self.scaling == "minmax" else ""),
                "prescale": list(self.prescale),
                "center": list(self.center),
                "spread": list(self.spread),
            },
            "intercept": self.intercept,
            "unit_rows": self.unit_rows,
            "label_column": {"name": self.label_name, "index": self.label_index},
        }
        if self.classes is not None:
            out["labels"] = {str(i): c for i, c in enumerate(self.classes)}
        else:
            out["targets"] = {
                "prescale": self.target_prescale,
                "center": self.target_center,
                "spread": self.target_spread,
                "mean": self.target_mean,
                "std": self.target_std,
            }
        return out

    @classmethod
    def from_json(cls, model: str, state: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from to_json's output (raises KeyError/TypeError/ValueError on a damaged one)."""
        scaling, features, label = state["scaling"], state["features"], state["label_column"]
        names = features.get("names")
        kwargs: dict[str, Any] = {}
        if model == "logistic":
            labels = state["labels"]
            kwargs["classes"] = tuple(labels[str(i)] for i in range(len(labels)))
        else:
            targets = state["targets"]
            kwargs |= {
                "target_prescale": float(targets["prescale"]),
                "target_center": float(targets["center"]),
                "target_spread": float(targets["spread"]),
            }
        return cls(
            model=model,
            scaling=str(scaling["method"]),
            prescale=_floats(scaling["prescale"]),
            center=_floats(scaling["center"]),
            spread=_floats(scaling["spread"]),
            intercept=bool(state["intercept"]),
            features=None if names is None else tuple(map(str, names)),
            label_name=label.get("name"),
            label_index=label.get("index"),
            unit_rows=bool(state.get("unit_rows", False)),
            categorical=tuple(
                (int(entry["column"]), tuple(map(str, entry["categories"]))) for entry in state.get("categorical", ())
            ),
            **kwargs,
        )


def _floats(values: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).tolist())


@dataclass(frozen=True)
class _OneHot:
    """Raw rows to encoded inputs: the numeric columns as float64, then one 0/1 column per category."""

    n_features: int
    categorical: tuple[tuple[int, tuple[str, ...]], ...]
    column_name: Callable[[int], str] = lambda column: f"column {column + 1}"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """The encoded inputs and, per categorical column, how many cells held a category not in its list."""
        categorical = {column for column, _ in self.categorical}
        numeric = [c for c in range(self.n_features) if c not in categorical]
        blocks, unseen = [self._numbers(x, numeric)], {}
        for column, categories in self.categorical:
            block, count = one_hot(x[:, column], categories)
            if count:
                unseen[column] = count
            blocks.append(block)
        return np.column_stack(blocks) if len(x) else np.zeros((0, sum(b.shape[1] for b in blocks))), unseen

    def _numbers(self, x: np.ndarray, numeric: list[int]) -> np.ndarray:
        try:
            return np.asarray(x[:, numeric], dtype=np.float64).reshape(len(x), len(numeric))
        except (TypeError, ValueError):
            for c in numeric:
                for r, cell in enumerate(x[:, c].tolist()):
                    try:
                        float(cell)
                    except (TypeError, ValueError):
                        raise ValueError(
                            f"Argument 'x' must hold numbers in {self.column_name(c)} (a numeric "
                            f"column of the model), not {cell!r} on row {r + 1}."
                        ) from None
            raise
