"""Lagrange coding: decode(any R of the N worker results) equals f on the true partitions, exactly."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpml.field import PrimeField, ResidueBasis, interpolation_matrix, largest_prime_below, residue_primes, uniform
from cpml.protocol import CodingScheme, fused_step, prepare_share, recovery_threshold, worker_compute
from cpml.protocol.fused_step import block_terms
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


def _largest_fused_prime() -> int:
    """The largest prime the fused worker step takes: its int64 blocks still hold _MIN_BLOCK products."""
    half = math.isqrt((2**63 - 1 - 2**28) // fused_step._MIN_BLOCK)  # h^2 * MIN_BLOCK + p <= 2^63 - 1
    p = largest_prime_below(2 * half + 2)
    assert block_terms(p) >= fused_step._MIN_BLOCK > block_terms(largest_prime_below(2**28))
    return p


FUSED_PRIMES = [65537, 2**25 - 39, _largest_fused_prime()]


@pytest.mark.parametrize("p", FUSED_PRIMES)
@pytest.mark.parametrize("block", [None, 1, 3])
def test_the_fused_step_matches_python_ints(p, block):
    # block 1 and 3 make these small shares cross every reduction of the row sums and of the result
    assert fused_step.fused_available(p)
    field = PrimeField(p)
    rng = np.random.default_rng(p % 1000 + (block or 0))
    for case in range(6):
        rows, d, r = int(rng.integers(1, 9)), int(rng.integers(1, 12)), int(rng.integers(1, 4))
        classes = 1 if case < 3 else int(rng.integers(2, 4))
        x = rng.integers(0, p, (rows, d)).astype(np.uint32)
        w = rng.integers(0, p, (d, classes * r)).astype(np.uint32)
        coefficients = rng.integers(0, p, r + 1).astype(np.uint32)
        if case == 0:  # the largest magnitudes: every centred value +-(p-1)/2, every coefficient p-1
            x[:] = (p + 1) // 2
            w[:] = (p - 1) // 2
            coefficients[:] = p - 1
        got = fused_step.fused_compute(field, field.centred(x, np.int32), w, coefficients, block)
        assert got.dtype == np.uint32
        for c in range(classes):  # d x C, row-major
            expected = reference_f(p, x, w[:, c * r : (c + 1) * r], coefficients)
            assert got.reshape(d, classes)[:, c].tolist() == expected, (case, rows, d, r, c)


def test_the_fused_step_reduces_long_rows_and_many_rows_exactly():
    # the real block at the largest fused prime, crossed by a row longer than it and by more rows than it
    p = _largest_fused_prime()
    field, block = PrimeField(p), block_terms(p)
    rng = np.random.default_rng(5)
    for rows, d in ((3, block + 7), (block + 5, 2)):
        x = np.full((rows, d), (p + 1) // 2, dtype=np.uint32)  # centred -(p-1)/2: the largest products
        x[rng.integers(0, rows, 3), rng.integers(0, d, 3)] = rng.integers(0, p, 3)
        w = np.full((d, 1), (p - 1) // 2, dtype=np.uint32)
        coefficients = np.array([p - 1, p - 1], dtype=np.uint32)
        expected = field_compute(field, x, w, coefficients)  # the float64 limb kernels
        assert (
            fused_step.fused_compute(field, field.centred(x, np.int32), w, coefficients).tolist() == expected.tolist()
        )
        # and the float64 kernels against Python ints on one column
        xi = [[int(v) for v in row] for row in x]
        z = [sum(a * int(w[j, 0]) for j, a in enumerate(row)) % p for row in xi]
        s = [(int(coefficients[0]) + int(coefficients[1]) * v) % p for v in z]
        assert int(expected[0]) == sum(xi[i][0] * s[i] for i in range(rows)) % p


@pytest.mark.parametrize("p", FUSED_PRIMES)
def test_the_exact_sigmoids_product_kernels_match_python_ints(p):
    # X̃W̃ (stage 0) and X̃ᵀẼ (stage 1), whose rows go four at a time: row counts around multiples of four, C up
    # to 3, the largest magnitudes, and at the largest fused prime more rows than one reduction block holds
    field = PrimeField(p)
    rng = np.random.default_rng(p % 1000)
    shapes = [(1, 3, 1), (4, 5, 2), (7, 1, 3), (9, 6, 1)]
    if p == _largest_fused_prime():
        shapes.append((block_terms(p) + 6, 2, 2))
    for case, (rows, d, classes) in enumerate(shapes):
        x = rng.integers(0, p, (rows, d)).astype(np.uint32)
        w = rng.integers(0, p, (d, classes)).astype(np.uint32)
        e = rng.integers(0, p, (rows, classes)).astype(np.uint32)
        if case % 2 == 0:  # every centred value -(p-1)/2: the largest products
            x[:], w[:], e[:] = (p + 1) // 2, (p + 1) // 2, (p + 1) // 2
        xi = x.astype(object)
        products = fused_step.fused_products(field, field.centred(x, np.int32), w)
        assert products.reshape(rows, classes).tolist() == ((xi @ w.astype(object)) % p).tolist(), (case, p)
        transposed = fused_step.fused_transposed(field, field.centred(x, np.int32), e)
        assert transposed.reshape(d, classes).tolist() == ((xi.T @ e.astype(object)) % p).tolist(), (case, p)


@pytest.mark.parametrize("moduli", [residue_primes(2**25 - 39, 2), residue_primes(2**31 - 1, 2)])
def test_prepare_share_keeps_the_fused_form_where_it_applies(moduli):
    basis = ResidueBasis(moduli)
    rng = np.random.default_rng(3)
    x = np.stack([rng.integers(0, p, (6, 4)).astype(np.uint32) for p in moduli])
    w = np.stack([rng.integers(0, p, (4, 2)).astype(np.uint32) for p in moduli])
    coefficients = np.stack([rng.integers(0, p, 3).astype(np.uint32) for p in moduli])
    prepared = prepare_share(basis, x)
    assert prepared.dtype == (np.int32 if moduli[0] < 2**28 else np.float64)
    assert (
        worker_compute(basis, prepared, w, coefficients).tolist() == worker_compute(basis, x, w, coefficients).tolist()
    )


def test_prepare_share_takes_a_centred_int32_share_as_it_is_and_refuses_one_that_is_not():
    basis = ResidueBasis(residue_primes(2**25 - 39, 2))
    x = np.stack([np.random.default_rng(4).integers(0, p, (6, 4)).astype(np.uint32) for p in basis.moduli])
    centred = prepare_share(basis, x)
    assert prepare_share(basis, centred) is centred
    with pytest.raises(ValueError, match="x_share"):
        prepare_share(basis, x.astype(np.int32))  # elements, not centred values
