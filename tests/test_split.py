"""cpml.split picks the rows scikit-learn's train_test_split picks, for every seed, fraction and label mix."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from cpml.data import load_dataset
from cpml.split import split_indices


def _sklearn(rows: int, fraction: float, seed: int, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    return tuple(train_test_split(np.arange(rows), test_size=fraction, random_state=seed, stratify=labels))[:2]


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1])
@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.5, 0.77])
def test_the_shuffled_split_matches_scikit_learn(seed: int, fraction: float) -> None:
    for rows in (5, 10, 101, 1000):
        train, test = split_indices(rows, fraction, seed)
        expected_train, expected_test = _sklearn(rows, fraction, seed, None)
        np.testing.assert_array_equal(train, expected_train)
        np.testing.assert_array_equal(test, expected_test)


def test_the_stratified_split_matches_scikit_learn_on_random_labels() -> None:
    draw = np.random.default_rng(2024)
    for case in range(300):
        classes = int(draw.integers(2, 7))
        rows = int(draw.integers(4 * classes, 400))
        weights = draw.dirichlet(np.ones(classes))
        labels = draw.choice(classes, size=rows, p=weights)
        labels[: 2 * classes] = np.repeat(np.arange(classes), 2)  # at least 2 rows of each class
        if case % 3 == 0:  # text labels sort differently from their codes
            labels = np.array(["b", "a", "c", "e", "d", "f"])[labels]
        fraction = float(draw.uniform(0.05, 0.6))
        seed = int(draw.integers(0, 2**32))
        try:
            expected = _sklearn(rows, fraction, seed, labels)
        except ValueError:  # too few rows on one side for the classes: data.py refuses these before splitting
            continue
        train, test = split_indices(rows, fraction, seed, labels)
        np.testing.assert_array_equal(train, expected[0], err_msg=f"case {case}")
        np.testing.assert_array_equal(test, expected[1], err_msg=f"case {case}")


@pytest.mark.parametrize("loader", [load_breast_cancer, load_digits])
def test_the_stratified_split_matches_scikit_learn_on_real_labels(loader) -> None:
    y = loader().target
    for seed in range(5):
        train, test = split_indices(len(y), 0.2, seed, y)
        expected_train, expected_test = _sklearn(len(y), 0.2, seed, y)
        np.testing.assert_array_equal(train, expected_train)
        np.testing.assert_array_equal(test, expected_test)


def test_load_dataset_keeps_the_rows_train_test_split_kept() -> None:
    cancer = load_breast_cancer()
    data = load_dataset("breast-cancer", 0.2, "none", seed=3)
    x_train, x_test = train_test_split(cancer.data, test_size=0.2, random_state=3, stratify=cancer.target)
    np.testing.assert_array_equal(data.x_train, x_train)
    np.testing.assert_array_equal(data.x_test, x_test)


def test_a_fraction_that_empties_a_side_is_refused() -> None:
    with pytest.raises(ValueError, match="Argument 'test_fraction'"):
        split_indices(1, 0.5, 0)
