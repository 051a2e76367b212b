"""Shamir sharing, reconstruction and the hyper-invertible extraction matrix, against Python-int references."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpml.field import PrimeField, uniform
from cpml.mpc import party_points, reconstruct, share
from cpml.mpc.extraction import extract, hyper_invertible_matrix
from cpml.mpc.shamir import recombination_vector

FIELD = PrimeField(2**25 - 39)


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 5), extra=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_any_t_plus_1_shares_reconstruct_the_secret(t, extra, seed):
    rng = np.random.default_rng(seed)
    n = t + 1 + extra
    secret = uniform(FIELD, (3, 4))
    shares = share(FIELD, secret, t, party_points(n))
    chosen = rng.choice(n, size=t + 1, replace=False)
    by_point = {int(i) + 1: shares[i] for i in chosen}
    assert np.array_equal(reconstruct(FIELD, by_point, t), secret)


def test_shares_are_the_polynomial_evaluated_with_python_ints():
    coefficients = uniform(FIELD, (2, 5))
    secret = uniform(FIELD, 5)
    fixed = iter([coefficients])
    shares = share(FIELD, secret, 2, (1, 2, 7), lambda field, shape: next(fixed))
    for row, x in enumerate((1, 2, 7)):
        for col in range(5):
            want = (int(secret[col]) + int(coefficients[0, col]) * x + int(coefficients[1, col]) * x * x) % FIELD.p
            assert int(shares[row, col]) == want


def test_products_of_degree_t_shares_reconstruct_from_2t_plus_1_but_not_t_plus_1():
    t, n = 2, 5
    a, b = uniform(FIELD, 50), uniform(FIELD, 50)
    points = party_points(n)
    product = FIELD.mul(share(FIELD, a, t, points), share(FIELD, b, t, points))
    by_point = {x: product[i] for i, x in enumerate(points)}
    assert np.array_equal(reconstruct(FIELD, by_point, 2 * t), FIELD.mul(a, b))
    assert not np.array_equal(reconstruct(FIELD, by_point, t), FIELD.mul(a, b))


def test_recombination_vector_matches_lagrange_at_zero_with_python_ints():
    points = (1, 2, 3, 4, 5)
    weights = recombination_vector(FIELD, points)
    p = FIELD.p
    for i, xi in enumerate(points):
        num = den = 1
        for xj in points:
            if xj != xi:
                num, den = num * (-xj) % p, den * (xi - xj) % p
        assert int(weights[i]) == num * pow(den, p - 2, p) % p


def test_bad_arguments_are_refused_with_the_template():
    with pytest.raises(ValueError, match=r"Argument 'degree' must be between 0 and 2 for 3 points, not 3\."):
        share(FIELD, uniform(FIELD, 4), 3, (1, 2, 3))
    with pytest.raises(ValueError, match=r"Argument 'shares' must hold at least degree\+1 = 3 shares, not 2\."):
        reconstruct(FIELD, {1: uniform(FIELD, 2), 2: uniform(FIELD, 2)}, 2)
    with pytest.raises(ValueError, match=r"Argument 'secret' must hold field elements"):
        share(FIELD, np.array([FIELD.p], dtype=np.uint32), 1, (1, 2))
    with pytest.raises(ValueError, match=r"Argument 'points' must be distinct non-zero elements"):
        share(FIELD, uniform(FIELD, 2), 1, (0, 2))


def _rank_mod_p(rows: list[list[int]], p: int) -> int:
    m = [list(r) for r in rows]
    rank = 0
    for col in range(len(m[0]) if m else 0):
        pivot = next((i for i in range(rank, len(m)) if m[i][col] % p), None)
        if pivot is None:
            continue
        m[rank], m[pivot] = m[pivot], m[rank]
        inv = pow(m[rank][col], p - 2, p)
        m[rank] = [v * inv % p for v in m[rank]]
        for i in range(len(m)):
            if i != rank and m[i][col]:
                f = m[i][col]
                m[i] = [(a - f * b) % p for a, b in zip(m[i], m[rank])]
        rank += 1
    return rank


def test_every_square_submatrix_of_the_hyper_invertible_matrix_is_invertible():
    field = PrimeField(101)
    n = 5
    matrix = hyper_invertible_matrix(field, n).astype(int).tolist()
    for size in range(1, n + 1):
        for rows in itertools.combinations(range(n), size):
            for cols in itertools.combinations(range(n), size):
                sub = [[matrix[r][c] for c in cols] for r in rows]
                assert _rank_mod_p(sub, field.p) == size


def test_extraction_keeps_the_degree_of_the_sharings():
    t, n = 2, 5
    points = party_points(n)
    secrets = uniform(FIELD, (n, 30))
    dealt = np.stack([share(FIELD, secrets[i], t, points) for i in range(n)])  # dealer, party, value
    per_party = np.stack([extract(FIELD, t, dealt[:, j]) for j in range(n)])  # party, output, value
    expected = extract(FIELD, t, secrets)
    for k in range(n - t):
        by_point = {x: per_party[j, k] for j, x in enumerate(points)}
        assert np.array_equal(reconstruct(FIELD, by_point, t), expected[k])
