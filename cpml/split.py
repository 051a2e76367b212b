"""The seeded train/test split of scikit-learn's `train_test_split`, row for row, without importing scikit-learn.

Importing scikit-learn costs a short job seconds; this module draws from the same `RandomState(seed)` in the
same order (scikit-learn 1.x's ShuffleSplit and StratifiedShuffleSplit), so a seed picks the same rows as before
and as `train_test_split(x, y, test_size=f, random_state=seed, stratify=labels)` does (tests/test_split.py).
"""

from __future__ import annotations

import math

import numpy as np


def test_rows(rows: int, test_fraction: float) -> int:
    """How many of `rows` rows a test fraction holds out: ceil(fraction * rows), as scikit-learn rounds it."""
    return math.ceil(test_fraction * rows)


def split_indices(
    rows: int, test_fraction: float, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices, shuffled by `seed` and stratified by the `stratify` labels when given."""
    n_test = test_rows(rows, test_fraction)
    n_train = rows - n_test
    if not 0 < n_test < rows:
        raise ValueError(
            f"Argument 'test_fraction' must leave rows on both sides of the split of {rows} rows, "
            f"not {test_fraction} ({n_train} train, {n_test} test)."
        )
    rng = np.random.RandomState(seed)
    if stratify is None:
        order = rng.permutation(rows)
        return order[n_test:], order[:n_test]
    _, classes, counts = np.unique(stratify, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(classes, kind="stable"), np.cumsum(counts)[:-1])
    train_counts = _apportion(counts, n_train, rng)
    test_counts = _apportion(counts - train_counts, n_test, rng)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for rows_of_class, n_tr, n_te in zip(members, train_counts, test_counts, strict=True):
        shuffled = rows_of_class.take(rng.permutation(len(rows_of_class)), mode="clip")
        train.append(shuffled[:n_tr])
        test.append(shuffled[n_tr : n_tr + n_te])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _apportion(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Split `draws` over classes in proportion to `counts`: floors, then the largest remainders (ties at random)."""
    exact = counts / counts.sum() * draws
    shares = np.floor(exact)
    missing = int(draws - shares.sum())
    remainder = exact - shares
    for value in np.sort(np.unique(remainder))[::-1]:
        if missing <= 0:
            break
        (tied,) = np.where(remainder == value)
        take = min(len(tied), missing)
        shares[rng.choice(tied, size=take, replace=False)] += 1
        missing -= take
    return shares.astype(int)
