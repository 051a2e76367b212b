"""The master's memory while it sets a job up: tracemalloc peaks of loading and preparing a table, against its bytes,
and the block-by-block steps that keep it low giving the bits of whole-table numpy.

tracemalloc counts what Python and numpy allocate, not the resident memory, so the bounds hold however busy
the machine is. The table is long enough that the blocks the loaders work in are a few percent of it.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest

from cpml.data import load_dataset
from cpml.preprocessing import ROWS_AT_ONCE, Preprocessing, feature_statistics, power_of_two_scale
from cpml.protocol import CodedTrainer, Plan, RunInputs, auto_precision, public_profile
from cpml.protocol.quantize import quantize_data
from cpml.protocol.run import labelled_sums, quantize_partitions

ROWS, FEATURES = 250_000, 30  # 60 MB of float64: each label, index or block of 2^14 rows is a few percent of it
T = TypeVar("T")


def traced_peak(call: Callable[[], T]) -> tuple[T, int]:
    """What call returns, and the most bytes it held at once beyond what was allocated before it."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, FEATURES)) * 10.0 ** rng.uniform(-2, 3, FEATURES)
    y = (x[:, 0] + rng.standard_normal(ROWS) > 0).astype(np.float64)
    path = tmp_path_factory.mktemp("memory") / "table.npz"
    np.savez(path, x=x, y=y)
    return path, x.nbytes


def test_loading_a_table_holds_it_and_its_scaled_splits_only(table):
    # The table read (1x) and its scaled splits with their intercept column (1.03x), with the labels, the split's
    # indices and a block or two: no raw copy of a split, no table-sized temporary while scaling (before: 3.6x).
    path, raw_bytes = table
    data, peak = traced_peak(lambda: load_dataset(str(path), 0.2, "standard", intercept=True))
    assert data.x_train.shape == (ROWS - ROWS // 5, FEATURES + 1)
    assert peak <= 2.4 * raw_bytes, f"loading peaked at {peak / raw_bytes:.2f}x the table's bytes"


def test_preparing_the_shares_adds_at_most_one_copy_of_the_data(table):
    # Quantized straight into the int32 partitions (0.5x): no int64 or float64 copy of them (before: 2.5x).
    path, _ = table
    data = load_dataset(str(path), 0.2, "standard", intercept=True)
    plan = auto_precision(Plan.case1(10, 1, iterations=1), public_profile("standard", *data.x_train.shape))
    trainer, peak = traced_peak(
        lambda: CodedTrainer.create(RunInputs(plan, data.x_train, data.y_train, 0, data.x_test, data.y_test))
    )
    assert trainer.partitions.dtype == np.int32
    assert peak <= 1.25 * data.x_train.nbytes, f"preparing peaked at {peak / data.x_train.nbytes:.2f}x the data"


@pytest.mark.parametrize("d", [1, 2, 7])
def test_statistics_and_scaling_by_blocks_have_the_bits_of_whole_table_numpy(d):
    # numpy sums a row-major table's columns row after row (a single column pairwise): the blocks repeat that
    rng = np.random.default_rng(d)
    x = rng.standard_normal((3 * ROWS_AT_ONCE + 5, d)) * 10.0 ** rng.uniform(-6, 6, d) + 1e3
    rows = rng.permutation(len(x))[: 2 * ROWS_AT_ONCE + 9]
    picked = x[rows]
    s = power_of_two_scale(picked)
    prescaled = picked / s
    assert_bits_equal(feature_statistics(x, "standard", rows), (s, prescaled.mean(axis=0), prescaled.std(axis=0)))
    lo, hi = prescaled.min(axis=0), prescaled.max(axis=0)
    assert_bits_equal(feature_statistics(x, "minmax", rows), (s, lo, hi - lo))
    prep = Preprocessing.fit(x, np.arange(len(x)) % 2, scaling="standard", intercept=True, rows=rows)
    stats = np.asarray(prep.prescale), np.asarray(prep.center), np.asarray(prep.spread)
    expected = np.column_stack([(picked / stats[0] - stats[1]) / stats[2], np.ones(len(picked))])
    assert_bits_equal((prep.transform(x, rows),), (expected,))


def assert_bits_equal(got: tuple[np.ndarray, ...], expected: tuple[np.ndarray, ...]) -> None:
    """Every array the same bytes."""
    assert [a.tobytes() for a in got] == [b.tobytes() for b in expected]


@pytest.mark.parametrize("classes", [1, 3])
def test_partitions_and_xty_by_blocks_have_the_bits_of_the_whole_table(classes):
    # 0/1 labels: every partial sum is an exact integer, so block by block is the one product's bits
    rng = np.random.default_rng(classes)
    x = rng.uniform(-1, 1, (3 * ROWS_AT_ONCE + 7, 6))
    y = rng.integers(0, 2, len(x)).astype(np.float64)
    if classes > 1:
        y = np.eye(classes)[rng.integers(0, classes, len(x))]
    partitions, quantized = quantize_partitions(x, 24, 3), quantize_data(x, 24)
    rows = partitions.reshape(-1, x.shape[1])  # consecutive blocks, the last zero-padded
    assert np.array_equal(rows[: len(x)], quantized) and not rows[len(x) :].any()
    expected = quantized.astype(np.float64).T @ y
    assert labelled_sums(partitions, y).tobytes() == expected.tobytes()
