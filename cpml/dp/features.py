"""Public feature bounds shared by every party of a run, and a warning for rows one feature dominates.

A schema is a JSON file the operator writes from public knowledge (never from the data), e.g.

    {"features": [{"name": "age", "min": 0, "max": 120}, {"name": "income", "min": 0, "max": 1e6},
                  {"name": "workclass", "categories": ["Private", "State-gov", "missing"]}]}

one entry per feature column. Each number is clipped to [min, max] and mapped to [-1, 1]; each categorical
cell becomes one 0/1 input per listed category ('?', 'NA' and empty cells are the category 'missing', a
category not listed is all zeros): a fixed per-record map, so the DP guarantee covers it (unlike scaling with
data statistics), and every party that uses the same file encodes the same way. When every entry has a name
and a party's file has a header, its columns are matched to the schema by name (any order), and a party
whose columns differ is refused naming the column; else they are taken in order. The server checks that
every party holds the same schema by a digest in Join; with more than two classes the run's public list of
labels, in order, is part of that digest (`run_schema`), so a party that lists them in another order cannot
join and train column c as another class.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
import structlog

from cpml.errors import argument_error
from cpml.files import read_capped
from cpml.preprocessing import one_hot

log = structlog.get_logger(__name__)

# A feature carrying more than this share of the rows' squared norms leaves the others (and the bias)
# almost nothing once rows are scaled into the unit ball.
DOMINANT_SHARE = 0.9
MAX_SCHEMA_BYTES = 1 << 20


def run_schema(bounds: FeatureBounds | None, classes: tuple[str, ...] = ()) -> str:
    """The digest Join checks: the feature bounds' digest, with the run's ordered class list when it has one."""
    digest = bounds.digest if bounds is not None else ""
    if not classes:  # two classes: the digest the bounds always had ("" for none)
        return digest
    canonical = json.dumps({"features": digest, "classes": list(classes)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class FeatureBounds:
    """Public [min, max] bounds of each feature column, and the schema's digest."""

    lower: tuple[float, ...]  # per feature (0 for a categorical one)
    upper: tuple[float, ...]  # per feature (1 for a categorical one)
    names: tuple[str, ...]
    categories: tuple[tuple[str, ...] | None, ...] = ()  # per feature: its categories, None for a number
    named: bool = False  # every entry has a name: files with a header are matched to it by name

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical schema: equal for every party that read the same schema."""
        schema: dict[str, object] = {
            "lower": [float(v).hex() for v in self.lower],
            "upper": [float(v).hex() for v in self.upper],
        }
        if any(self.categories):  # a numbers-only schema keeps the digest it always had
            schema |= {"categories": list(self.categories), "names": list(self.names)}
        return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()

    def match(self, x: np.ndarray, names: tuple[str, ...] | None, file: str) -> np.ndarray:
        """The columns of x in the schema's order: by header name when both name them, else as they are."""
        if not (self.named and names is not None):
            return x
        missing = [name for name in self.names if name not in names]
        if missing:
            raise argument_error(
                "data",
                f"have the schema's feature column {missing[0]!r} ({len(missing)} of its {len(self.names)} missing)",
                f"{file} with columns {', '.join(names)}",
            )
        extra = [name for name in names if name not in self.names]
        if extra:
            raise argument_error(
                "data",
                f"have only the schema's feature columns ({', '.join(self.names)}) and the label",
                f"{file} with the column {extra[0]!r} the schema does not list",
            )
        return x[:, [names.index(name) for name in self.names]]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Clip every numeric column to its bounds and map it linearly onto [-1, 1]; one-hot the categorical ones."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(self.lower):
            raise argument_error(
                "feature_bounds",
                f"list one entry per feature column ({x.shape[-1]} in the data)",
                f"{len(self.lower)} entries",
            )
        if any(self.categories):
            return self._encode(x)
        x = x.astype(np.float64)
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        clipped = np.clip(x, lower, upper)
        outside = int(np.count_nonzero(clipped != x))
        if outside:
            log.warning("values outside the feature bounds were clipped", values=outside, rows=x.shape[0])
        return 2.0 * (clipped - lower) / (upper - lower) - 1.0

    def _encode(self, x: np.ndarray) -> np.ndarray:
        columns, unseen = [], 0
        for c, categories in enumerate(self.categories):
            if categories is None:
                try:
                    values = x[:, c : c + 1].astype(np.float64)
                except (TypeError, ValueError):
                    raise argument_error(
                        "data", f"hold numbers in the schema's numeric column {self.names[c]!r}", "text"
                    ) from None
                columns.append(FeatureBounds((self.lower[c],), (self.upper[c],), (self.names[c],)).apply(values))
                continue
            block, count = one_hot(x[:, c], categories)
            unseen += count
            columns.append(block)
        if unseen:
            log.warning(
                "cells whose category the schema does not list encode as all zeros", cells=unseen, rows=x.shape[0]
            )
        return np.column_stack(columns)


def read_feature_bounds(path: Path | str) -> FeatureBounds:
    """Load and validate a schema file (see the module docstring for its format)."""
    path = Path(path)
    text = read_capped(path, MAX_SCHEMA_BYTES, "feature_bounds", "JSON schema file")
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise argument_error("feature_bounds", "be a readable JSON schema file", f"{path} ({exc})") from None
    entries = schema.get("features") if isinstance(schema, dict) else None
    if not isinstance(entries, list) or not entries:
        raise argument_error("feature_bounds", 'hold {"features": [{"min": ..., "max": ...}, ...]}', str(path))
    lower, upper, names = [], [], []
    categories: list[tuple[str, ...] | None] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and "categories" in entry:
            lo, hi = 0.0, 1.0
            categories.append(_categories(entry["categories"], i, path))
        else:
            lo, hi = _bounds(entry, i, path)
            categories.append(None)
        lower.append(lo)
        upper.append(hi)
        names.append(str(entry.get("name", f"column {i}")))
    named = all("name" in entry for entry in entries)
    if named and len(set(names)) != len(names):
        raise argument_error("feature_bounds", "name each feature once", f"{path} repeating a name")
    return FeatureBounds(tuple(lower), tuple(upper), tuple(names), tuple(categories), named)


def _categories(values: object, index: int, path: Path) -> tuple[str, ...]:
    if not (
        isinstance(values, list)
        and values
        and all(isinstance(v, str) for v in values)
        and len(set(values)) == len(values)
    ):
        raise argument_error(
            "feature_bounds", f"give feature {index} of {path} distinct categories as a list of strings", values
        )
    return tuple(values)


def _bounds(entry: object, index: int, path: Path) -> tuple[float, float]:
    where = f"feature {index} of {path}"
    if not isinstance(entry, dict):
        raise argument_error("feature_bounds", f"give {where} as an object with min and max", entry)
    lo, hi = entry.get("min"), entry.get("max")
    if not (_number(lo) and _number(hi) and math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argument_error("feature_bounds", f"give {where} finite bounds with min < max", f"min={lo!r}, max={hi!r}")
    return float(lo), float(hi)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_scaling(bounds: FeatureBounds | None, scaling: str) -> None:
    """Refuse scaling by data statistics on top of public feature bounds (the schema scales)."""
    if bounds is not None and scaling != "none":
        raise argument_error("scaling", "be none with --feature-bounds (the schema scales)", scaling)


def dominant_feature(x: np.ndarray) -> tuple[int, float] | None:
    """The column carrying more than DOMINANT_SHARE of the rows' squared norms, with its share, if any."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0:
        return None
    # Rows are scaled one by one, so what matters is each feature's share of each row's norm.
    squared = np.square(x / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.finfo(np.float64).tiny))
    shares = (squared / np.maximum(squared.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)).mean(axis=0)
    column = int(np.argmax(shares))
    return (column, float(shares[column])) if shares[column] > DOMINANT_SHARE else None


def warn_if_dominated(x: np.ndarray, hint: str) -> str | None:
    """Log (and return) a warning when one feature dominates the row norms; `hint` says what to do."""
    found = dominant_feature(x)
    if found is None:
        return None
    column, share = found
    message = (
        f"feature column {column} carries {100 * share:.1f}% of the rows' squared norms on average:"
        " once rows are scaled into the unit ball the other features and the bias shrink to almost"
        f" nothing and the model can barely learn from them; {hint}"
    )
    log.warning(message)
    return message
