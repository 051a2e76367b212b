"""Locating wrong evaluations of a polynomial (Berlekamp–Welch on a random combination of coordinates)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpml.field import field_for
from cpml.field.errors import TooManyErrors, locate_errors

PRIMES = (33554393, 2147483647, 1000003)


def codeword(p, degree, points, d, rng):
    coefficients = rng.integers(0, p, size=(degree + 1, d)).astype(object)
    return np.array(
        [[int(sum(int(c) * pow(a, k, p) for k, c in enumerate(col)) % p) for col in coefficients.T] for a in points],
        dtype=np.uint64,
    ).astype(np.uint32)


@settings(max_examples=40, deadline=None)
@given(
    p=st.sampled_from(PRIMES),
    degree=st.integers(0, 9),
    errors=st.integers(0, 3),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_up_to_a_wrong_rows_are_found_exactly(p, degree, errors, d, seed, data):
    rng = np.random.default_rng(seed)
    n = degree + 1 + 2 * errors
    points = [int(v) for v in rng.choice(np.arange(1, 10 * n + 10), size=n, replace=False)]
    values = codeword(p, degree, points, d, rng)
    wrong = data.draw(st.lists(st.integers(0, n - 1), max_size=errors, unique=True))
    for i in wrong:  # a wrong worker may corrupt any subset of the coordinates, by any amount
        cols = data.draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=d, unique=True))
        for c in cols:
            values[i, c] = (int(values[i, c]) + data.draw(st.integers(1, p - 1))) % p
    assert locate_errors(field_for(p), points, values, degree, errors) == sorted(wrong)


def test_one_more_reply_detects_a_wrong_one_and_too_many_are_refused():
    p, degree = 33554393, 4
    rng = np.random.default_rng(0)
    points = list(range(1, degree + 3))
    values = codeword(p, degree, points, 3, rng)
    assert locate_errors(field_for(p), points, values, degree, 0) == []
    values[2, 1] = (int(values[2, 1]) + 1) % p
    with pytest.raises(TooManyErrors, match="some worker returned a wrong result"):
        locate_errors(field_for(p), points, values, degree, 0)
    points = list(range(1, degree + 4))
    values = codeword(p, degree, points, 3, rng)
    values[0, 0] = (int(values[0, 0]) + 5) % p
    values[3, 2] = (int(values[3, 2]) + 5) % p
    with pytest.raises(TooManyErrors):
        locate_errors(field_for(p), points, values, degree, 1)
