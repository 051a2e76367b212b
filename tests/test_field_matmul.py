"""Exact modular matmul against a Python-int reference: every prime size class, adversarial values, every path."""

import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpml.field import PrimeField, largest_prime_below, matmul_mod, matmul_mod_centred
from cpml.field import matmul as kernel

# The largest prime of every bit length from 2 to 31, plus a few that are far from a power of two.
PRIMES = sorted({largest_prime_below(2**bits) for bits in range(2, 32)} | {5, 7, 65537, 12582893, 2**30 + 3})
# (n, k, m): encoding-like (short inner), worker-like (long inner, one column), decoding-like, square-ish.
SHAPES = [(5, 17, 40), (4, 301, 1), (3, 50, 30), (9, 33, 12)]


def reference(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """(a @ b) mod p with Python integers: slow and obviously right."""
    return ((a.astype(object) @ b.astype(object)) % p).astype(np.uint32)


def adversarial(p: int, kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Field elements whose centred values are extreme: the cases that break an inexact float kernel."""
    half = (p - 1) // 2
    if kind == "p-2":
        return np.full(shape, p - 2, dtype=np.uint32)
    if kind == "near-half":  # +-((p-1)/2 - 1), both signs
        return rng.choice(np.array([max(half - 1, 0), p - max(half - 1, 0)]) % p, shape).astype(np.uint32)
    if kind == "extremes":  # the largest magnitudes of both signs, and their neighbours
        return rng.choice(np.array([half, half + 1, half - 1, p - 1, 1, p - 2, 0]) % p, shape).astype(np.uint32)
    if kind == "all-p-1":
        return np.full(shape, p - 1, dtype=np.uint32)
    return rng.integers(0, p, shape, dtype=np.uint64).astype(np.uint32)


def product(field: PrimeField, a: np.ndarray, b: np.ndarray, right: str) -> np.ndarray:
    """The kernel on field elements, with the right operand centred as float64 or as int32."""
    if right == "float64":
        return matmul_mod(field, a, b)
    return matmul_mod_centred(field, field.centred(a), field.centred(b, np.int32))


@pytest.mark.parametrize("right", ["float64", "int32"])
@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])
@pytest.mark.parametrize("p", PRIMES)
@pytest.mark.parametrize("kind", ["random", "p-2", "near-half", "extremes", "all-p-1"])
def test_matches_python_ints_for_every_prime_size(monkeypatch, p, kind, compiled, right):
    monkeypatch.setattr(kernel, "_COMPILED_PRODUCTS", 1 if compiled else 2**62)
    rng = np.random.default_rng(p)
    field = PrimeField(p)
    for n, k, m in SHAPES:
        a = adversarial(p, kind, (n, k), rng)
        b = adversarial(p, kind, (k, m), rng)
        assert np.array_equal(product(field, a, b, right), reference(a, b, p)), (n, k, m)


@pytest.mark.parametrize("p", [2**25 - 39, 2**31 - 1])
def test_the_adversarial_inputs_catch_a_kernel_without_limbs(p):
    # An unsplit float64 GEMM rounds these products: the inputs above are strong enough to see it.
    field = PrimeField(p)
    half = (p - 1) // 2
    a = np.full((2, 301), half - 1, dtype=np.uint32)
    b = np.full((301, 2), half - 1, dtype=np.uint32)
    plain = np.mod(field.centred(a) @ field.centred(b), p).astype(np.uint32)
    assert not np.array_equal(plain, reference(a, b, p))
    assert np.array_equal(matmul_mod(field, a, b), reference(a, b, p))


@pytest.mark.parametrize(
    "knobs",
    [
        {"_TILE_ELEMENTS": 64},  # many tiles, partial edge tiles
        {"_TILE_ELEMENTS": 64, "_PARALLEL_WORK": 1},  # tiles shared between threads
        {"_gemm_piece": lambda: 50},  # each tile's GEMM cut into pieces
        {"_MAX_INNER_CHUNK": 7},  # inner dimension in chunks, summed as centred residues
        {"_MAX_INNER_CHUNK": 1, "_TILE_ELEMENTS": 16, "_PARALLEL_WORK": 1},
    ],
    ids=["tiles", "threads", "gemm-pieces", "inner-chunks", "everything"],
)
@pytest.mark.parametrize("right", ["float64", "int32"])
@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])
@pytest.mark.parametrize("p", [3, 65521, 2**25 - 39, 2**31 - 1])
def test_every_cut_of_the_product_is_exact(monkeypatch, knobs, p, compiled, right):
    monkeypatch.setattr(kernel, "_COMPILED_PRODUCTS", 1 if compiled else 2**62)
    for name, value in knobs.items():
        monkeypatch.setattr(kernel, name, value)
    rng = np.random.default_rng(7)
    field = PrimeField(p)
    for n, k, m in [(17, 40, 23), (6, 17, 200), (40, 9, 3)]:
        for kind in ["random", "extremes"]:
            a, b = adversarial(p, kind, (n, k), rng), adversarial(p, kind, (k, m), rng)
            assert np.array_equal(product(field, a, b, right), reference(a, b, p)), (n, k, m, kind)


@pytest.mark.parametrize("p", [2**25 - 39, 2**31 - 1])
def test_the_encoding_shape_uses_one_gemm_and_large_primes_use_limbs(p):
    field = PrimeField(p)
    a, b = np.zeros((50, 17)), np.zeros((17, 1000))
    plan = kernel._Product.plan(field.p, a, b)
    assert (plan.split, plan.limbs) == (("", 1) if p < 2**25 else ("a", 2))


def test_long_products_split_the_smaller_operand_and_stay_exact():
    p = 2**25 - 39
    field = PrimeField(p)
    rng = np.random.default_rng(3)
    x = adversarial(p, "extremes", (30, 3073), rng)
    w = adversarial(p, "extremes", (3073,), rng)
    xc, wc = field.centred(x), field.centred(w)
    expected = reference(x, w[:, None], p)[:, 0]
    assert np.array_equal(matmul_mod_centred(field, xc, wc), expected)  # the worker's X w
    v = adversarial(p, "extremes", (30,), rng)
    expected_t = reference(x.T, v[:, None], p)[:, 0]
    assert np.array_equal(matmul_mod_centred(field, xc.T, field.centred(v)), expected_t)  # X^T v, a view


@pytest.mark.parametrize("p", [3, 2**25 - 39, 2**31 - 1])
def test_the_reduction_is_exact_at_the_edges_of_its_domain(p):
    # Values q*p + r with |q*p + r| up to 2^53 - 2^32 and residues at the rounding boundaries.
    half = (p - 1) // 2
    top = int(kernel._EXACT) // p
    quotients = [0, 1, -1, 2, top - 1, top - 2, -(top - 1), 12345, -98765]
    residues = [0, 1, -1, 2, half, -half, half - 1, -(half - 1), p - 1, -(p - 1)]
    values = [q * p + r for q in quotients for r in residues if abs(q * p + r) <= kernel._EXACT]
    x = np.array(values, dtype=np.float64).reshape(1, -1)
    assert all(float(v) == v for v in values)  # the inputs themselves are exact
    scratch = np.empty(x.size)
    out = np.empty(x.shape, dtype=np.uint32)
    kernel._reduce_into(x.copy(), scratch, out, p)
    assert out.ravel().tolist() == [v % p for v in values]
    fused = np.zeros((2, x.size + 3), dtype=np.uint32)
    kernel._compiled_reduction()(x.copy(), fused, 1, 2, p, 1.0 / p)  # written at an offset into a larger array
    assert fused[1, 2:-1].tolist() == [v % p for v in values]
    assert not fused[0].any() and not fused[1, :2].any() and not fused[1, -1]
    centred = x.copy()
    kernel._centred_residue(centred, np.empty_like(x), p)
    assert np.all(np.abs(centred) <= half + 4)
    assert [int(c) % p for c in centred.ravel()] == [v % p for v in values]


@settings(max_examples=60, deadline=None)
@given(
    p=st.sampled_from(PRIMES),
    n=st.integers(1, 12),
    k=st.integers(1, 80),
    m=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    extreme=st.booleans(),
)
def test_random_products_match_python_ints(p, n, k, m, seed, extreme):
    rng = np.random.default_rng(seed)
    kind = "extremes" if extreme else "random"
    a, b = adversarial(p, kind, (n, k), rng), adversarial(p, kind, (k, m), rng)
    assert np.array_equal(matmul_mod(PrimeField(p), a, b), reference(a, b, p))


def test_empty_products_are_zero_matrices():
    field = PrimeField()
    assert matmul_mod(field, np.zeros((3, 0), np.uint32), np.zeros((0, 4), np.uint32)).tolist() == [[0] * 4] * 3
    assert matmul_mod(field, np.zeros((0, 5), np.uint32), np.zeros((5, 2), np.uint32)).shape == (0, 2)


def test_mismatched_shapes_are_refused_naming_the_argument():
    field = PrimeField()
    with pytest.raises(ValueError, match=r"^Argument 'b' must have 3 rows to match 'a', not \(4, 2\)\.$"):
        matmul_mod(field, np.zeros((2, 3), np.uint32), np.zeros((4, 2), np.uint32))


def test_operands_of_other_dtypes_are_refused_naming_the_argument():
    field = PrimeField()
    with pytest.raises(
        ValueError,
        match=r"^Argument 'b' must hold centred representatives as float64 or int32, "
        r"not 'int64'\.$",
    ):
        matmul_mod_centred(field, np.zeros((2, 3)), np.zeros((3, 2), np.int64))


def test_centred_int32_holds_the_same_values_as_float64():
    field = PrimeField(2**31 - 1)
    x = np.array([0, 1, field.p // 2, field.p // 2 + 1, field.p - 1], dtype=np.uint32)
    assert field.centred(x, np.int32).dtype == np.int32
    assert field.centred(x, np.int32).tolist() == field.centred(x).tolist() == [0, 1, 2**30 - 1, -(2**30 - 1), -1]
    with pytest.raises(ValueError, match=r"^Argument 'dtype' must be numpy.float64 or numpy.int32"):
        field.centred(x, np.int64)


def test_values_outside_the_field_are_refused():
    field = PrimeField(65537)
    with pytest.raises(ValueError, match=r"Argument 'b' must hold field elements in \[0, 65537\), not 65537\."):
        matmul_mod(field, np.zeros((2, 3), np.uint32), np.full((3, 2), 65537, np.uint32))


def test_concurrent_callers_share_the_tile_workers(monkeypatch):
    monkeypatch.setattr(kernel, "_TILE_ELEMENTS", 64)
    monkeypatch.setattr(kernel, "_PARALLEL_WORK", 1)
    monkeypatch.setattr(kernel, "_cores", lambda: 2)
    field = PrimeField()
    rng = np.random.default_rng(11)
    cases = [
        (adversarial(field.p, "random", (13, 40), rng), adversarial(field.p, "random", (40, 29), rng)) for _ in range(6)
    ]
    with ThreadPoolExecutor(6) as callers:
        results = list(callers.map(lambda ab: matmul_mod(field, *ab), cases))
    for (a, b), got in zip(cases, results):
        assert np.array_equal(got, reference(a, b, field.p))


def test_each_thread_takes_its_own_contiguous_run_first_then_steals_from_the_back():
    queue = kernel._TileQueue([(0, 1, c, c + 1) for c in range(10)], 2)  # runs [0, 5) and [5, 10)
    assert [queue.take(0)[2] for _ in range(3)] == [0, 1, 2]
    assert [queue.take(1)[2] for _ in range(5)] == [5, 6, 7, 8, 9]
    assert [queue.take(1)[2] for _ in range(2)] == [4, 3]  # stolen from the back of worker 0's run
    assert queue.take(0) is None and queue.take(1) is None


def test_the_tile_queue_hands_out_every_tile_exactly_once_under_contention():
    tiles = [(0, 1, c, c + 1) for c in range(5000)]
    queue = kernel._TileQueue(tiles, 3)
    start = threading.Barrier(3)

    def drain(worker: int) -> list:
        start.wait()
        taken = []
        while (tile := queue.take(worker)) is not None:
            taken.append(tile)
        return taken

    with ThreadPoolExecutor(3) as pool:
        taken = [tile for part in pool.map(drain, range(3)) for tile in part]
    assert sorted(taken) == tiles


class FakeThreadpools:
    """Stands in for threadpoolctl's controller: reports the given BLAS libraries."""

    blas: tuple[dict, ...] = ()

    def select(self, **_):
        return self

    def info(self):
        return list(self.blas)


@pytest.mark.parametrize(
    ("blas", "piece"),
    [
        ([{"internal_api": "openblas", "architecture": "SkylakeX"}], 1_000_000),  # small-matrix kernels
        ([{"internal_api": "openblas", "architecture": "Haswell"}], 1 << 18),  # threads above 2^18
        ([{"internal_api": "openblas", "architecture": "SkylakeX"}, {"internal_api": "mkl"}], 1 << 18),
        ([], 1 << 18),
    ],
)
def test_gemm_pieces_stay_on_the_calling_thread(monkeypatch, blas, piece):
    monkeypatch.setattr(FakeThreadpools, "blas", tuple(blas))
    monkeypatch.setattr(kernel, "ThreadpoolController", FakeThreadpools)
    kernel._gemm_piece.cache_clear()
    try:
        assert kernel._gemm_piece() == piece
    finally:
        kernel._gemm_piece.cache_clear()


def _product_in_child(results) -> None:
    field = PrimeField()
    a = adversarial(field.p, "extremes", (17, 40), np.random.default_rng(5))
    b = adversarial(field.p, "extremes", (40, 23), np.random.default_rng(6))
    results.put(bool(np.array_equal(matmul_mod(field, a, b), reference(a, b, field.p))))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_tile_workers(monkeypatch):
    # The parent's pool threads do not survive fork(); a child reusing that pool would wait forever.
    monkeypatch.setattr(kernel, "_TILE_ELEMENTS", 64)
    monkeypatch.setattr(kernel, "_PARALLEL_WORK", 1)
    monkeypatch.setattr(kernel, "_cores", lambda: 2)
    all_started = threading.Barrier(3)  # both pool threads running (then idle) before the fork
    waits = [kernel._pool().submit(all_started.wait) for _ in range(2)]
    all_started.wait()
    for wait in waits:
        wait.result()
    queue = multiprocessing.get_context("fork").SimpleQueue()
    child = multiprocessing.get_context("fork").Process(target=_product_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and queue.get() is True
