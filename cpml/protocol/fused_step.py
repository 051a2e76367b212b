"""The worker's step in one pass over its share, exact in int64: row by row, s̄ from the row's products with W̃,
then s̄ times the same row (still in cache) into the result.

The share is kept as centred int32 values (|v| <= (p-1)/2): the bytes of the uint32 share, half those of float64.
Each product of two centred values is below h^2 (h = (p-1)/2), so an int64 sum holds `block_terms(p)` of them
exactly with a residue on top; sums are reduced mod p that often. X̃ᵀ s̄(X̃ W̃) then reads the share from memory
once per round instead of once per product, and needs no float64 limbs: for p < 2^25 it is about half the time of
two raw float64 matrix-vector products on the same shape (bench/bench_field.py). Compiled by numba; without
numba (a worker-only install), or for primes whose blocks would be short, the worker keeps the float64 kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from cpml.field import Elements, PrimeField
from cpml.field.jit import compiled

_INT64_MAX = 2**63 - 1
_MIN_BLOCK = 1024  # below this (p above ~2^27.5) the reductions cost more than the float64 kernels
_SIGNATURE = "void(int32[:, ::1], int32[:, ::1], int64[::1], int64, int64, int64[:, ::1])"


def block_terms(p: int) -> int:
    """How many products of centred values an int64 sum holds exactly on top of a residue in [0, p)."""
    half = (p - 1) // 2
    return (_INT64_MAX - p) // (half * half)


def fused_available(p: int) -> bool:
    """Whether the fused step runs for this prime here (numba installed, blocks long enough)."""
    return block_terms(p) >= _MIN_BLOCK and _kernel() is not None


def warm_up() -> None:
    """Compile the fused step and the product kernels now (or load them from numba's disk cache)."""
    _kernel()
    _products_kernel()
    _transposed_kernel()


def fused_compute(
    field: PrimeField,
    x_share: npt.NDArray[np.int32],
    w_share: npt.NDArray[np.uint32],
    coefficients: npt.NDArray[np.uint32],
    block: int | None = None,
) -> Elements:
    """X̃ᵀ s̄(X̃ W̃) mod p from a centred int32 share, as field_compute returns it (d x C, flattened row-major)."""
    # block exists for tests: a short one makes small arrays cross every reduction
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("the fused worker step needs numba")
    classes = w_share.shape[1] // (len(coefficients) - 1)
    w = np.ascontiguousarray(field.centred(w_share, np.int32).T)  # Cr x d: each column of W̃ contiguous
    c = np.asarray(coefficients, dtype=np.int64) % field.p
    out = np.empty((classes, x_share.shape[1]), dtype=np.int64)
    kernel(np.ascontiguousarray(x_share), w, c, field.p, block or block_terms(field.p), out)
    return out.T.reshape(-1).astype(np.uint32)


def fused_products(field: PrimeField, x_share: npt.NDArray[np.int32], w_share: npt.NDArray[np.uint32]) -> Elements:
    """X̃ W̃ mod p (rows x C, flattened row-major) from a centred int32 share, in one pass over it."""
    kernel = _products_kernel()
    if kernel is None:
        raise RuntimeError("the fused products need numba")
    w = np.ascontiguousarray(field.centred(w_share, np.int32).T)  # C x d
    out = np.empty((x_share.shape[0], w.shape[0]), dtype=np.int64)
    kernel(np.ascontiguousarray(x_share), w, field.p, block_terms(field.p), out)
    return out.reshape(-1).astype(np.uint32)


def fused_transposed(field: PrimeField, x_share: npt.NDArray[np.int32], e_share: npt.NDArray[np.uint32]) -> Elements:
    """X̃ᵀ Ẽ mod p (d x C, flattened row-major) from a centred int32 share, in one pass over it."""
    kernel = _transposed_kernel()
    if kernel is None:
        raise RuntimeError("the fused products need numba")
    e = np.ascontiguousarray(field.centred(e_share, np.int32))  # rows x C
    out = np.empty((e.shape[1], x_share.shape[1]), dtype=np.int64)
    kernel(np.ascontiguousarray(x_share), e, field.p, block_terms(field.p), out)
    return out.T.reshape(-1).astype(np.uint32)


def _kernel() -> Callable[..., Any] | None:
    return compiled(_step_rows, _SIGNATURE)


def _products_kernel() -> Callable[..., Any] | None:
    return compiled(_product_rows, "void(int32[:, ::1], int32[:, ::1], int64, int64, int64[:, ::1])")


def _transposed_kernel() -> Callable[..., Any] | None:
    return compiled(_transposed_rows, "void(int32[:, ::1], int32[:, ::1], int64, int64, int64[:, ::1])")


def _product_rows(x: Any, w: Any, p: int, block: int, out: Any) -> None:
    """out[i, k] = x_i . w_k mod p, int64 throughout, reduced every `block` terms."""
    rows, d = x.shape
    for i in range(rows):
        row = x[i]
        for k in range(w.shape[0]):
            column = w[k]
            z = np.int64(0)
            for lo in range(0, d, block):
                a, b = row[lo : lo + block], column[lo : lo + block]
                part = np.int64(0)
                for t in range(a.shape[0]):
                    part += np.int64(a[t]) * np.int64(b[t])
                z = (z + part % p) % p
            out[i, k] = z


def _transposed_rows(x: Any, e: Any, p: int, block: int, out: Any) -> None:
    """out[k] = sum_i e_ik x_i mod p, int64 throughout, reduced every `block` rows."""
    # Four rows per pass over the accumulators: a quarter of their loads and stores (the bound on a pass).
    rows, d = x.shape
    classes = e.shape[1]
    out[:] = 0
    since = 0
    for i in range(0, rows - rows % 4, 4):
        if since + 4 > block:
            for k in range(classes):
                for t in range(d):
                    out[k, t] %= p
            since = 0
        r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        for k in range(classes):
            e0, e1 = np.int64(e[i, k]), np.int64(e[i + 1, k])
            e2, e3 = np.int64(e[i + 2, k]), np.int64(e[i + 3, k])
            target = out[k]
            for t in range(d):
                target[t] += e0 * np.int64(r0[t]) + e1 * np.int64(r1[t]) + e2 * np.int64(r2[t]) + e3 * np.int64(r3[t])
        since += 4
    for i in range(rows - rows % 4, rows):
        if since == block:
            for k in range(classes):
                for t in range(d):
                    out[k, t] %= p
            since = 0
        row = x[i]
        for k in range(classes):
            ek = np.int64(e[i, k])
            target = out[k]
            for t in range(d):
                target[t] += ek * np.int64(row[t])
        since += 1
    for k in range(classes):
        for t in range(d):
            out[k, t] %= p


def _step_rows(x: Any, w: Any, c: Any, p: int, block: int, out: Any) -> None:
    """out[k] = sum_i s_ik x_i mod p, s_ik = c_0 + sum_j c_j prod_{l<=j} (x_i . w_{k,l}) mod p (centred) for each
    class k, w's rows class-major (C x r of them); int64 throughout."""
    rows, d = x.shape
    classes, r = out.shape[0], c.shape[0] - 1
    half = (p - 1) // 2
    out[:] = 0
    s = np.empty(classes, dtype=np.int64)
    since = 0  # rows added to out since its last reduction
    for i in range(rows):
        row = x[i]
        for k in range(classes):
            total = c[0]
            running = np.int64(1)
            for j in range(r):
                column = w[k * r + j]
                z = np.int64(0)
                for lo in range(0, d, block):
                    a, b = (
                        row[lo : lo + block],
                        column[lo : lo + block],
                    )  # slices: LLVM vectorizes this, not range(lo, hi)
                    part = np.int64(0)
                    for t in range(a.shape[0]):
                        part += np.int64(a[t]) * np.int64(b[t])
                    z = (z + part % p) % p  # numba's % is Python's: a residue in [0, p)
                running = running * z % p
                total = (total + running * c[j + 1]) % p
            s[k] = total - p if total > half else total
        if since == block:
            for k in range(classes):
                for t in range(d):
                    out[k, t] %= p
            since = 0
        for k in range(classes):
            sk = s[k]
            target = out[k]
            for t in range(d):
                target[t] += sk * np.int64(row[t])
        since += 1
    for k in range(classes):
        for t in range(d):
            out[k, t] %= p
