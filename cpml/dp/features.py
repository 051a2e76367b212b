"""Public feature bounds shared by every party of a run, and a warning for rows one feature dominates.

A schema is a JSON file the operator writes from public knowledge (never from the data), e.g.

    {"features": [{"name": "age", "min": 0, "max": 120}, {"name": "income", "min": 0, "max": 1e6}]}

one entry per feature column in file order. Each value is clipped to [min, max] and mapped to [-1, 1]:
a fixed per-record map, so the DP guarantee covers it (unlike scaling with data statistics), and every
party that uses the same file scales the same way. The server checks that by a digest in Join.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from cpml.errors import argument_error

log = structlog.get_logger(__name__)

# A feature carrying more than this share of the rows' squared norms leaves the others (and the bias)
# almost nothing once rows are scaled into the unit ball.
DOMINANT_SHARE = 0.9
MAX_SCHEMA_BYTES = 1 << 20


@dataclass(frozen=True)
class FeatureBounds:
    """Public [min, max] bounds of each feature column, and the schema's digest."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    names: tuple[str, ...]

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical bounds: equal for every party that read the same schema."""
        canonical = json.dumps({"lower": [float(v).hex() for v in self.lower],
                                "upper": [float(v).hex() for v in self.upper]}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Clip every column to its bounds and map it linearly onto [-1, 1]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.lower):
            raise argument_error("feature_bounds", f"list one entry per feature column ({x.shape[-1]} in the"
                                 " data)", f"{len(self.lower)} entries")
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        clipped = np.clip(x, lower, upper)
        outside = int(np.count_nonzero(clipped != x))
        if outside:
            log.warning("values outside the feature bounds were clipped", values=outside,
                        rows=x.shape[0])
        return 2.0 * (clipped - lower) / (upper - lower) - 1.0


def read_feature_bounds(path: Path | str) -> FeatureBounds:
    """Load and validate a schema file (see the module docstring for its format)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SCHEMA_BYTES + 1)
        schema = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise argument_error("feature_bounds", "be a readable JSON schema file", f"{path} ({exc})") from None
    if len(raw) > MAX_SCHEMA_BYTES:
        raise argument_error("feature_bounds", f"be at most {MAX_SCHEMA_BYTES} bytes", str(path))
    entries = schema.get("features") if isinstance(schema, dict) else None
    if not isinstance(entries, list) or not entries:
        raise argument_error("feature_bounds", 'hold {"features": [{"min": ..., "max": ...}, ...]}', str(path))
    lower, upper, names = [], [], []
    for i, entry in enumerate(entries):
        lo, hi = _bounds(entry, i, path)
        lower.append(lo)
        upper.append(hi)
        names.append(str(entry.get("name", f"column {i}")))
    return FeatureBounds(tuple(lower), tuple(upper), tuple(names))


def _bounds(entry: object, index: int, path: Path) -> tuple[float, float]:
    where = f"feature {index} of {path}"
    if not isinstance(entry, dict):
        raise argument_error("feature_bounds", f"give {where} as an object with min and max", entry)
    lo, hi = entry.get("min"), entry.get("max")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi))
    if not (numbers and math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argument_error("feature_bounds", f"give {where} finite bounds with min < max",
                             f"min={lo!r}, max={hi!r}")
    return float(lo), float(hi)


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
    message = (f"feature column {column} carries {100 * share:.1f}% of the rows' squared norms on average:"
               " once rows are scaled into the unit ball the other features and the bias shrink to almost"
               f" nothing and the model can barely learn from them; {hint}")
    log.warning(message)
    return message
