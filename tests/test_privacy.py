"""T-privacy: the shares any T workers hold are jointly uniform whatever the data (chi-square tests).

Each test is run twice: with the CSPRNG masks (must look uniform and not depend on the data) and with
the masks replaced by zeros (must be caught), so the test is shown to be able to fail.
"""

import itertools

import numpy as np
import pytest
from scipy import stats

from cpml.field import PrimeField, uniform
from cpml.protocol import CodingScheme, CodedTrainer

P = 31  # a tiny field so the joint distribution of T shares has few cells: 31^2 = 961
TRIALS = 40_000


def zero_masks(field, shape):
    return np.zeros(shape, dtype=np.uint32)


def joint_counts(shares: np.ndarray, workers: tuple[int, ...]) -> np.ndarray:
    """Histogram of the T-tuples of share values held by `workers` (one tuple per trial)."""
    cells = np.zeros(len(shares[0]), dtype=np.int64)
    for w in workers:
        cells = cells * P + shares[w].astype(np.int64)
    return np.bincount(cells, minlength=P ** len(workers))


def encode_trials(secrets: np.ndarray, mask_source) -> np.ndarray:
    scheme = CodingScheme(PrimeField(P), n=10, k=2, t=2)
    return scheme.encode(secrets.astype(np.float64), mask_source)


DATASETS = {
    "zeros": lambda rng: np.zeros((2, TRIALS)),
    "random": lambda rng: rng.integers(-15, 15, (2, TRIALS)),
    "replicated weights": lambda rng: np.repeat(rng.integers(-15, 15, (1, TRIALS)), 2, axis=0),
}


@pytest.mark.parametrize("workers", [(0, 1), (3, 9), (4, 7)])
def test_any_t_shares_are_uniform_and_independent_of_the_data(workers):
    rng = np.random.default_rng(7)
    tables = []
    for make in DATASETS.values():
        counts = joint_counts(encode_trials(make(rng), uniform), workers)
        assert stats.chisquare(counts).pvalue > 1e-4
        tables.append(counts)
    # The zero dataset and the random dataset give the same distribution of T shares.
    assert stats.chi2_contingency(np.array(tables[:2])).pvalue > 1e-4


@pytest.mark.parametrize("workers", [(0, 1), (3, 9)])
def test_the_same_test_catches_the_leak_without_masks(workers):
    rng = np.random.default_rng(7)
    zeros = joint_counts(encode_trials(DATASETS["zeros"](rng), zero_masks), workers)
    random = joint_counts(encode_trials(DATASETS["random"](rng), zero_masks), workers)
    assert stats.chisquare(zeros).pvalue < 1e-12
    assert stats.chi2_contingency(np.array([zeros, random]) + 1).pvalue < 1e-12


def test_fewer_masks_than_colluders_leak():
    # T+1 colluders of a T-private code can interpolate: their joint shares depend on the data.
    rng = np.random.default_rng(3)
    scheme = CodingScheme(PrimeField(P), n=10, k=1, t=1)
    secrets_a = np.zeros((1, TRIALS))
    secrets_b = rng.integers(-15, 15, (1, TRIALS)).astype(np.float64)
    a = joint_counts(scheme.encode(secrets_a), (0, 1))
    b = joint_counts(scheme.encode(secrets_b), (0, 1))
    assert stats.chi2_contingency(np.array([a, b]) + 1).pvalue < 1e-12


def test_trainer_masks_come_from_the_csprng_and_are_fresh_per_chunk():
    from cpml.protocol import Plan

    plan = Plan(n_workers=10, k=3, t=1, lx=2, lw=3, lc=2, p=2**25 - 39, iterations=1, learning_rate=0.1)
    x = np.zeros((30, 4))
    trainer = CodedTrainer.create(plan, x, np.zeros(30), seed=0)
    assert trainer.mask_source is uniform
    first, second = list(trainer.share_chunks(5))[:2]
    # All-zero data: every share value is a mask value; fresh masks per chunk means no repeats.
    assert not np.array_equal(first.shares, second.shares)
    for pair in itertools.combinations(range(10), 2):
        assert not np.array_equal(first.shares[pair[0]], first.shares[pair[1]])
