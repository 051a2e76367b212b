"""Lagrange coding: decode(any R of the N worker results) equals f on the true partitions, exactly."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpml.field import PrimeField, ResidueBasis, interpolation_matrix, residue_primes, uniform
from cpml.protocol import CodingScheme, prepare_share, recovery_threshold, worker_compute
from cpml.protocol.worker_function import field_compute

PRIMES = [65537, 2**25 - 39, 2**31 - 1]


def reference_f(p, x, w, coefficients):
    """f(X, W) = Xᵀ s̄(X, W) with Python ints."""
    x_rows = [[int(v) for v in row] for row in x]
    w_cols = [[int(w[i, j]) for i in range(w.shape[0])] for j in range(w.shape[1])]
    s = []
    for row in x_rows:
        total, running = int(coefficients[0]), 1
        for j, col in enumerate(w_cols):
            running = running * sum(a * b for a, b in zip(row, col)) % p
            total += int(coefficients[j + 1]) * running
        s.append(total % p)
    return [sum(x_rows[i][c] * s[i] for i in range(len(x_rows))) % p for c in range(x.shape[1])]


@pytest.mark.parametrize("p", PRIMES)
def test_worker_compute_matches_python_ints(p):
    field = PrimeField(p)
    rng = np.random.default_rng(1)
    x = rng.integers(0, p, (7, 5)).astype(np.uint32)
    w = rng.integers(0, p, (5, 3)).astype(np.uint32)
    x[0, :] = p - 2
    coefficients = rng.integers(0, p, 4).astype(np.uint32)
    assert field_compute(field, x, w, coefficients).tolist() == reference_f(p, x, w, coefficients)
    assert field_compute(field, field.centred(x), w, coefficients).tolist() == reference_f(p, x, w, coefficients)


@pytest.mark.parametrize("p", PRIMES)
@pytest.mark.parametrize("r", [1, 2, 3])
def test_c_classes_in_one_pass_are_the_c_single_class_functions(p, r):
    field = PrimeField(p)
    rng = np.random.default_rng(r)
    classes = 4
    x = rng.integers(0, p, (9, 6)).astype(np.uint32)
    w = rng.integers(0, p, (6, classes * r)).astype(np.uint32)
    x[0, :], w[:, -1] = p - 1, p - 1  # worst cases
    coefficients = rng.integers(0, p, r + 1).astype(np.uint32)
    together = field_compute(field, x, w, coefficients).reshape(6, classes)  # d x C, row-major on the wire
    for c in range(classes):
        assert together[:, c].tolist() == reference_f(p, x, w[:, c * r : (c + 1) * r], coefficients)
    with pytest.raises(ValueError, match=r"Argument 'w_share' must have shape \(6, C x r\) with r = "):
        field_compute(field, x, w[:, :-1], coefficients) if r > 1 else field_compute(field, x, w[:5], coefficients)


@pytest.mark.parametrize("moduli", [(65537,), residue_primes(2**25 - 39, 2), residue_primes(2**31 - 1, 3)])
def test_worker_compute_is_the_field_function_in_every_residue(moduli):
    basis = ResidueBasis(moduli)
    rng = np.random.default_rng(2)
    x = np.stack([rng.integers(0, p, (7, 5)).astype(np.uint32) for p in moduli])
    w = np.stack([rng.integers(0, p, (5, 2)).astype(np.uint32) for p in moduli])
    coefficients = np.stack([rng.integers(0, p, 3).astype(np.uint32) for p in moduli])
    expected = [reference_f(p, x[j], w[j], coefficients[j]) for j, p in enumerate(moduli)]
    assert worker_compute(basis, x, w, coefficients).tolist() == expected
    assert worker_compute(basis, prepare_share(basis, x), w, coefficients).tolist() == expected
    with pytest.raises(ValueError, match=f"Argument 'w_share' must have shape \\({len(moduli)}, d, C r\\)"):
        worker_compute(basis, x, w[0], coefficients)
    with pytest.raises(ValueError, match=f"Argument 'x_share' must have shape \\({len(moduli)}, rows, d\\)"):
        prepare_share(basis, x[:, 0])


def test_interpolation_reproduces_polynomials():
    field = PrimeField(65537)
    coeffs = [5, 7, 11]  # 5 + 7z + 11z^2
    xs, targets = (3, 9, 20), (1, 2, 100, 9)
    values = [sum(c * x**i for i, c in enumerate(coeffs)) % field.p for x in xs]
    matrix = interpolation_matrix(field, xs, targets)
    got = (matrix.astype(object) @ np.array(values, dtype=object)) % field.p
    assert got.tolist() == [sum(c * t**i for i, c in enumerate(coeffs)) % field.p for t in targets]


def test_points_are_distinct_and_disjoint():
    scheme = CodingScheme(PrimeField(), n=40, k=9, t=4)
    alphas, betas = scheme.points
    assert len(set(alphas)) == 40 and len(set(betas)) == 13 and not set(alphas) & set(betas)


@settings(max_examples=40, deadline=None)
@given(
    p=st.sampled_from(PRIMES),
    k=st.integers(1, 4),
    t=st.integers(1, 3),
    r=st.integers(1, 3),
    extra=st.integers(0, 4),
    rows=st.integers(1, 4),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoding_any_r_of_n_results_gives_f_of_the_partitions(p, k, t, r, extra, rows, d, seed):
    field = PrimeField(p)
    rng = np.random.default_rng(seed)
    threshold = recovery_threshold(k, t, r)
    n = threshold + extra
    scheme = CodingScheme(field, n, k, t)
    partitions = rng.integers(-50, 50, (k, rows, d))
    weights = rng.integers(-50, 50, (d, r))
    coefficients = uniform(field, r + 1)
    x_shares = scheme.encode(partitions.reshape(k, -1).astype(np.float64)).reshape(n, rows, d)
    w_secret = np.broadcast_to(weights.reshape(1, -1).astype(np.float64), (k, d * r))
    w_shares = scheme.encode(np.ascontiguousarray(w_secret)).reshape(n, d, r)
    chosen = rng.permutation(n)[:threshold]
    replies = {int(i): field_compute(field, x_shares[i], w_shares[i], coefficients) for i in chosen}
    decoded = scheme.decode(replies, threshold)
    for block in range(k):
        expected = field_compute(field, field.phi(partitions[block]), field.phi(weights), coefficients)
        assert np.array_equal(decoded[block], expected)


def test_fewer_than_r_replies_are_refused():
    scheme = CodingScheme(PrimeField(65537), n=7, k=2, t=1)
    with pytest.raises(ValueError, match="Argument 'replies' must hold at least R = 7 results, not 6."):
        scheme.decode({i: np.zeros(3, dtype=np.uint32) for i in range(6)}, 7)
